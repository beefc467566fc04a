//! AMQP field-table helpers in RabbitMQ's vocabulary: type names (`signedint`, `longstr`),
//! integer extraction, value equality across integer widths, and the `inequivalent arg` check.

use crate::protocol::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's name for a field type (`rabbit_binary_parser` / `rabbit_misc`).
pub(crate) fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// The integer in an integer-typed value (RabbitMQ's `?INTEGER_ARG_TYPES`).
pub(crate) fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => *i as i64,
        AMQPValue::ShortShortUInt(i) => *i as i64,
        AMQPValue::ShortInt(i) => *i as i64,
        AMQPValue::ShortUInt(i) => *i as i64,
        AMQPValue::LongInt(i) => *i as i64,
        AMQPValue::LongUInt(i) => *i as i64,
        AMQPValue::LongLongInt(i) => *i,
        _ => return None,
    })
}

/// The bytes of a string value.
pub(crate) fn as_str_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// The string in a string value, lossily decoded.
pub(crate) fn as_string(v: &AMQPValue) -> Option<String> {
    as_str_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn type_class(v: &AMQPValue) -> &'static str {
    if as_int(v).is_some() {
        "int"
    } else if matches!(v, AMQPValue::Float(_) | AMQPValue::Double(_)) {
        "float"
    } else {
        type_name(v)
    }
}

/// Erlang `==` on field values: integers compare by value whatever their width, floats too.
pub(crate) fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    // Erlang's `==` compares numbers by value across integer and float types (1 == 1.0).
    let number = |v: &AMQPValue| match v {
        AMQPValue::Float(f) => Some(*f as f64),
        AMQPValue::Double(d) => Some(*d),
        other => as_int(other).map(|i| i as f64),
    };
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x == y;
    }
    // Strings and byte arrays are all Erlang binaries: compared by content.
    fn binary(v: &AMQPValue) -> Option<&[u8]> {
        match v {
            AMQPValue::ByteArray(b) => Some(b.as_slice()),
            other => as_str_bytes(other),
        }
    }
    if let (Some(x), Some(y)) = (binary(a), binary(b)) {
        return x == y;
    }
    a == b
}

/// Format a value as RabbitMQ does in error texts (`~s` for binaries, `~p` otherwise).
pub(crate) fn format_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => format!("{f:e}"),
        AMQPValue::Double(f) => format!("{f:e}"),
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => as_string(v).unwrap_or_default(),
        AMQPValue::Void => "undefined".into(),
        other => match as_int(other) {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

fn describe(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => format!("the value '{}' of type '{}'", format_value(v), type_name(v)),
    }
}

/// RabbitMQ's `assert_args_equivalence` over `keys`: a 406 naming the first differing key.
pub(crate) fn assert_equivalent(
    current: &FieldTable,
    received: &FieldTable,
    keys: &[&str],
    resource: &str,
) -> Result<(), AmqpError> {
    for key in keys {
        let (a, b) = (current.inner().get(*key), received.inner().get(*key));
        let same = match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) => type_class(x) == type_class(y) && values_equal(x, y),
            _ => false,
        };
        if !same {
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{key}' for {resource}: received {} but current is {}",
                describe(b),
                describe(a)
            )));
        }
    }
    Ok(())
}

/// The same check for a boolean flag (`durable`, `auto_delete`, ...).
pub(crate) fn assert_flag(
    name: &str,
    current: bool,
    received: bool,
    resource: &str,
) -> Result<(), AmqpError> {
    if current != received {
        return Err(AmqpError::precondition_failed(format!(
            "inequivalent arg '{name}' for {resource}: received '{received}' but current is '{current}'"
        )));
    }
    Ok(())
}

/// `exchange 'x' in vhost '/'` (RabbitMQ's `rabbit_misc:rs/1`).
pub(crate) fn rs(kind: &str, name: &str, vhost: &str) -> String {
    format!("{kind} '{name}' in vhost '{vhost}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_equivalent_across_widths() {
        let mut a = FieldTable::default();
        a.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
        let mut b = FieldTable::default();
        b.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
        assert!(assert_equivalent(&a, &b, &["x-message-ttl"], "queue 'q' in vhost '/'").is_ok());
        let mut c = FieldTable::default();
        c.insert("x-message-ttl".into(), AMQPValue::LongInt(2000));
        let e =
            assert_equivalent(&a, &c, &["x-message-ttl"], "queue 'q' in vhost '/'").unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': \
             received the value '2000' of type 'signedint' but current is the value '1000' of type 'signedint'"
        );
        let e = assert_equivalent(
            &a,
            &FieldTable::default(),
            &["x-message-ttl"],
            "queue 'q' in vhost '/'",
        )
        .unwrap_err();
        assert!(
            e.text
                .ends_with("received none but current is the value '1000' of type 'signedint'")
        );
    }
}
