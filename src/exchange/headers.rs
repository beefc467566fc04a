//! Headers exchange matching, as RabbitMQ's `rabbit_exchange_type_headers`: `x-match` = `all`
//! (default), `any`, `all-with-x`, `any-with-x`; binding keys starting `x-` are ignored unless
//! `-with-x`; a void binding value matches on presence; values compare by value (an `I` 1 equals
//! an `l` 1). With no keys to compare, `all` matches and `any` does not.

use crate::args::{type_name, values_equal};
use crate::protocol::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};

/// How binding arguments combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// Every key must match.
    All,
    /// At least one key must match.
    Any,
}

/// A compiled headers binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    kind: MatchKind,
    pattern: Vec<(String, AMQPValue)>,
}

impl Spec {
    /// Compile binding arguments; a bad `x-match` is RabbitMQ's 406.
    pub fn compile(args: &FieldTable) -> Result<Spec, AmqpError> {
        let (kind, with_x) = match args.inner().get("x-match") {
            None => (MatchKind::All, false),
            Some(AMQPValue::LongString(s)) => match s.as_bytes() {
                b"all" => (MatchKind::All, false),
                b"any" => (MatchKind::Any, false),
                b"all-with-x" => (MatchKind::All, true),
                b"any-with-x" => (MatchKind::Any, true),
                other => {
                    return Err(AmqpError::precondition_failed(format!(
                        "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                        String::from_utf8_lossy(other)
                    )));
                }
            },
            Some(v) => {
                return Err(AmqpError::precondition_failed(format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    type_name(v),
                    crate::args::format_value(v)
                )));
            }
        };
        let pattern = args
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        Ok(Spec { kind, pattern })
    }

    /// Whether a message with these headers matches.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let one =
            |(k, v): &(String, AMQPValue)| match headers.and_then(|h| h.inner().get(k.as_str())) {
                None => false,
                Some(_) if matches!(v, AMQPValue::Void) => true,
                Some(got) => values_equal(v, got),
            };
        match self.kind {
            MatchKind::All => self.pattern.iter().all(one),
            MatchKind::Any => self.pattern.iter().any(one),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(kv: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in kv {
            t.insert((*k).into(), v.clone());
        }
        t
    }
    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn all_any_and_with_x() {
        let msg = table(&[("a", s("1")), ("b", AMQPValue::LongInt(2)), ("x-k", s("v"))]);
        let all =
            Spec::compile(&table(&[("a", s("1")), ("b", AMQPValue::LongLongInt(2))])).unwrap();
        assert!(all.matches(Some(&msg)));
        let all2 = Spec::compile(&table(&[("a", s("1")), ("c", s("3"))])).unwrap();
        assert!(!all2.matches(Some(&msg)));
        let any = Spec::compile(&table(&[
            ("x-match", s("any")),
            ("a", s("9")),
            ("b", AMQPValue::LongInt(2)),
        ]))
        .unwrap();
        assert!(any.matches(Some(&msg)));
        let presence = Spec::compile(&table(&[("a", AMQPValue::Void)])).unwrap();
        assert!(presence.matches(Some(&msg)));
        // x- keys are ignored unless -with-x.
        let ignored = Spec::compile(&table(&[("x-k", s("nope"))])).unwrap();
        assert!(ignored.matches(Some(&msg)));
        let with_x =
            Spec::compile(&table(&[("x-match", s("all-with-x")), ("x-k", s("nope"))])).unwrap();
        assert!(!with_x.matches(Some(&msg)));
        let with_x =
            Spec::compile(&table(&[("x-match", s("any-with-x")), ("x-k", s("v"))])).unwrap();
        assert!(with_x.matches(Some(&msg)));
        // Empty pattern: all matches everything, any nothing.
        assert!(Spec::compile(&table(&[])).unwrap().matches(None));
        assert!(
            !Spec::compile(&table(&[("x-match", s("any"))]))
                .unwrap()
                .matches(Some(&msg))
        );
        // No headers at all.
        assert!(!all.matches(None));
    }

    #[test]
    fn bad_x_match() {
        let e = Spec::compile(&table(&[("x-match", s("foo"))])).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
        );
        assert_eq!(e.code.code(), 406);
    }
}
