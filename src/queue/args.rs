//! Queue arguments, validated as RabbitMQ 3.10's `rabbit_amqqueue:declare_args/0` does, and kept
//! parsed for the features that use them.

use crate::args::{as_int, as_str_bytes, format_value, type_name};
use crate::protocol::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};

/// Keys compared by the redeclare equivalence check (RabbitMQ compares the declare args).
pub const EQUIVALENCE_KEYS: &[&str] = &[
    // `x-queue-type` and a quorum queue's `x-delivery-limit` are compared first, by
    // [`assert_type_equivalent`].
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// RabbitMQ's largest TTL/expiry: ten years in ms (found by bisection against 3.10.8).
pub const MAX_EXPIRY: i64 = 315_360_000_000;

/// What to do when a length limit is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (nack with confirms).
    RejectPublish,
    /// Refuse and dead-letter the new message.
    RejectPublishDlx,
}

/// Parsed queue arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-expires` (ms): delete the queue after this long unused.
    pub expires: Option<u64>,
    /// `x-message-ttl` (ms).
    pub message_ttl: Option<u64>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-delivery-limit` (Warren offers it on every queue).
    pub delivery_limit: Option<u64>,
    /// `x-queue-type: quorum`: every message is stored, whatever its delivery mode.
    pub quorum: bool,
    /// `x-consumer-timeout` (ms): how long a delivery may stay unacknowledged.
    pub consumer_timeout: Option<u64>,
    /// Deliveries are counted in an `x-delivery-count` header on redelivery (quorum queues
    /// and queues with a delivery limit, as in RabbitMQ).
    pub counts_deliveries: bool,
}

enum Check {
    PositiveInt,
    DlxStrategy,
    NonNegInt,
    Expires,
    Ttl,
    MaxPriority,
    Bool,
    Dlx,
    DlxRk,
    Overflow,
    QueueMode,
    QueueType,
}

fn check(key: &str) -> Option<Check> {
    Some(match key {
        "x-expires" => Check::Expires,
        "x-message-ttl" => Check::Ttl,
        "x-dead-letter-exchange" => Check::Dlx,
        "x-dead-letter-routing-key" => Check::DlxRk,
        "x-max-length"
        | "x-max-length-bytes"
        | "x-max-in-memory-length"
        | "x-max-in-memory-bytes" => Check::NonNegInt,
        "x-max-priority" => Check::MaxPriority,
        "x-overflow" => Check::Overflow,
        "x-queue-mode" => Check::QueueMode,
        "x-single-active-consumer" => Check::Bool,
        "x-queue-type" => Check::QueueType,
        "x-delivery-limit" | "x-consumer-timeout" => Check::NonNegInt,
        "x-quorum-initial-group-size" | "x-initial-cluster-size" => Check::PositiveInt,
        "x-dead-letter-strategy" => Check::DlxStrategy,
        _ => return None,
    })
}

/// Validate one argument; the error is the Erlang term RabbitMQ prints.
fn validate_one(c: &Check, v: &AMQPValue, all: &FieldTable) -> Result<(), String> {
    let unacceptable = || Err(format!("{{unacceptable_type,{}}}", type_name(v)));
    let int = || as_int(v).ok_or(());
    // RabbitMQ 3.10's integer checks word a wrong type this way (an Erlang string, quoted).
    let not_int = || Err(format!("\"expected integer, got {}\"", type_name(v)));
    let expiry = |n: i64| {
        if n < 0 {
            Err(format!("{{value_negative,{n}}}"))
        } else if n > MAX_EXPIRY {
            Err(format!("{{value_too_large,{n}}}"))
        } else {
            Ok(())
        }
    };
    match c {
        Check::PositiveInt => match int() {
            Ok(0) => Err("{value_zero,0}".into()),
            Ok(n) if n < 0 => Err(format!("{{value_negative,{n}}}")),
            Ok(_) => Ok(()),
            Err(_) => not_int(),
        },
        Check::DlxStrategy => match as_str_bytes(v) {
            Some(b"at-most-once" | b"at-least-once") => Ok(()),
            Some(_) => Err("invalid_dlx_strategy".into()),
            None => unacceptable(),
        },
        Check::NonNegInt => match int() {
            Ok(n) if n >= 0 => Ok(()),
            Ok(n) => Err(format!("{{value_negative,{n}}}")),
            Err(_) => not_int(),
        },
        Check::Expires => match int() {
            Ok(0) => Err("{value_zero,0}".into()),
            Ok(n) => expiry(n),
            Err(_) => not_int(),
        },
        Check::Ttl => match int() {
            Ok(n) => expiry(n),
            Err(_) => not_int(),
        },
        Check::MaxPriority => match int() {
            Ok(n) if (0..=255).contains(&n) => Ok(()),
            Ok(n) if n < 0 => Err(format!("{{value_negative,{n}}}")),
            Ok(n) => Err(format!("{{max_value_exceeded,{n}}}")),
            Err(_) => not_int(),
        },
        Check::Bool => match v {
            AMQPValue::Boolean(_) => Ok(()),
            _ => unacceptable(),
        },
        Check::Dlx => match as_str_bytes(v) {
            Some(_) => Ok(()),
            None => unacceptable(),
        },
        Check::DlxRk => match as_str_bytes(v) {
            Some(_) if all.contains_key("x-dead-letter-exchange") => Ok(()),
            Some(_) => Err("routing_key_but_no_dlx_defined".into()),
            None => unacceptable(),
        },
        Check::Overflow => match as_str_bytes(v) {
            Some(b"drop-head" | b"reject-publish" | b"reject-publish-dlx") => Ok(()),
            Some(_) => Err("invalid_overflow".into()),
            None => unacceptable(),
        },
        Check::QueueMode => match as_str_bytes(v) {
            Some(b"default" | b"lazy") => Ok(()),
            Some(m) => Err(format!(
                "\"unsupported queue mode '{}'\"",
                String::from_utf8_lossy(m)
            )),
            None => unacceptable(),
        },
        Check::QueueType => match as_str_bytes(v) {
            // Quorum queues are served as classic queues (Warren has one queue type; delivery
            // limits work on every queue). Streams need a different consumer model: refused.
            Some(b"classic" | b"quorum") => Ok(()),
            Some(_) => Err("invalid_queue_type".into()),
            None => unacceptable(),
        },
    }
}

impl QueueArgs {
    /// Validate and parse; errors are RabbitMQ's `invalid arg` 406.
    pub fn parse(args: &FieldTable, resource: &str) -> Result<QueueArgs, AmqpError> {
        let quorum = args.inner().get("x-queue-type").and_then(as_str_bytes) == Some(b"quorum");
        for (k, v) in args.inner() {
            // Quorum queues take any `x-delivery-limit` (RabbitMQ 3.10.8 accepts -1 and
            // strings; 4.x: negative = no limit).
            if quorum && k.as_str() == "x-delivery-limit" {
                continue;
            }
            if k.as_str() == "x-dead-letter-exchange" && as_str_bytes(v).is_none() {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in {resource}",
                    type_name(v)
                )));
            }
            if let Some(c) = check(k.as_str()) {
                validate_one(&c, v, args).map_err(|term| {
                    AmqpError::precondition_failed(format!(
                        "invalid arg '{}' for {resource}: {term}",
                        k.as_str()
                    ))
                })?;
            }
        }
        Ok(QueueArgs::extract(args))
    }

    /// Take what each argument says without validating (stored definitions that no longer
    /// validate: a queue keeps every argument it can still read).
    pub fn extract(args: &FieldTable) -> QueueArgs {
        let quorum = args.inner().get("x-queue-type").and_then(as_str_bytes) == Some(b"quorum");
        let get = |k: &str| args.inner().get(k);
        let uint = |k: &str| get(k).and_then(as_int).map(|n| n.max(0) as u64);
        let string = |k: &str| get(k).and_then(crate::args::as_string);
        QueueArgs {
            expires: uint("x-expires"),
            message_ttl: uint("x-message-ttl"),
            dead_letter_exchange: string("x-dead-letter-exchange"),
            dead_letter_routing_key: string("x-dead-letter-routing-key"),
            max_length: uint("x-max-length"),
            max_length_bytes: uint("x-max-length-bytes"),
            overflow: match get("x-overflow").and_then(as_str_bytes) {
                Some(b"reject-publish") => Overflow::RejectPublish,
                Some(b"reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            },
            max_priority: uint("x-max-priority").map(|n| n as u8),
            single_active_consumer: matches!(
                get("x-single-active-consumer"),
                Some(AMQPValue::Boolean(true))
            ),
            delivery_limit: if quorum {
                quorum_delivery_limit(get("x-delivery-limit"))
            } else {
                uint("x-delivery-limit")
            },
            consumer_timeout: uint("x-consumer-timeout"),
            quorum,
            counts_deliveries: args.inner().contains_key("x-delivery-limit")
                || get("x-queue-type").and_then(as_str_bytes) == Some(b"quorum"),
        }
    }
}

/// Policy keys whose values are limits: between a policy and an operator policy, and between
/// them and a queue argument, the lower value wins (RabbitMQ 3.10.8, recorded).
const LOWER_WINS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// The definition that applies when `policy` and `operator` (either may be absent) match the
/// same queue: every key of both; for a limit set by both, the lower value (RabbitMQ's
/// `effective_policy_definition`).
pub fn merge_policies(
    policy: Option<&serde_json::Map<String, serde_json::Value>>,
    operator: Option<&serde_json::Map<String, serde_json::Value>>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = policy.cloned().unwrap_or_default();
    for (k, v) in operator.into_iter().flatten() {
        let lower = match (out.get(k).and_then(|x| x.as_u64()), v.as_u64()) {
            (Some(a), Some(b)) if LOWER_WINS.contains(&k.as_str()) => Some(a.min(b)),
            _ => None,
        };
        out.insert(
            k.clone(),
            lower.map_or_else(|| v.clone(), serde_json::Value::from),
        );
    }
    out
}

impl QueueArgs {
    /// These (declared) arguments with a policy definition applied, with RabbitMQ's
    /// precedence: limits take the lower of argument and policy; the dead-letter exchange and
    /// routing key and the overflow mode take the argument when there is one. `declared` is
    /// the queue's argument table (to tell a declared `x-overflow` from the default).
    pub fn with_policy(
        &self,
        declared: &FieldTable,
        def: &serde_json::Map<String, serde_json::Value>,
    ) -> QueueArgs {
        let num = |k: &str| def.get(k).and_then(|v| v.as_u64());
        let text = |k: &str| def.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let lower = |arg: Option<u64>, pol: Option<u64>| match (arg, pol) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
        let mut a = self.clone();
        a.message_ttl = lower(self.message_ttl, num("message-ttl"));
        a.expires = lower(self.expires, num("expires"));
        a.max_length = lower(self.max_length, num("max-length"));
        a.max_length_bytes = lower(self.max_length_bytes, num("max-length-bytes"));
        a.delivery_limit = lower(self.delivery_limit, num("delivery-limit"));
        a.consumer_timeout = lower(self.consumer_timeout, num("consumer-timeout"));
        if self.dead_letter_exchange.is_none() {
            a.dead_letter_exchange = text("dead-letter-exchange");
        }
        if self.dead_letter_routing_key.is_none() {
            a.dead_letter_routing_key = text("dead-letter-routing-key");
        }
        if !declared.inner().contains_key("x-overflow") {
            a.overflow = match text("overflow").as_deref() {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            };
        }
        a.counts_deliveries = self.counts_deliveries || num("delivery-limit").is_some();
        a
    }
}

/// RabbitMQ 4.x's delivery limit of a quorum queue: 20 unless set; a negative value means
/// none; a numeric string counts as its number (3.10.8 accepts one).
fn quorum_delivery_limit(v: Option<&AMQPValue>) -> Option<u64> {
    const DEFAULT: u64 = 20;
    let n = match v {
        None => return Some(DEFAULT),
        Some(v) => as_int(v).or_else(|| {
            std::str::from_utf8(as_str_bytes(v)?)
                .ok()?
                .trim()
                .parse()
                .ok()
        }),
    };
    match n {
        Some(n) if n < 0 => None,
        Some(n) => Some(n as u64),
        None => Some(DEFAULT),
    }
}

/// Arguments a quorum queue refuses (RabbitMQ 3.10.8, observed).
const QUORUM_UNSUPPORTED: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-queue-master-locator",
];

/// RabbitMQ's checks of a quorum queue declaration, after the arguments' own checks: no
/// unsupported argument (the first in key order is named), not server-named, then durable,
/// not exclusive, not auto-delete (auto-delete is reported first).
pub fn check_quorum(
    def: &super::QueueDef,
    server_named: bool,
    resource: &str,
) -> Result<(), AmqpError> {
    if let Some(k) = def
        .arguments
        .inner()
        .keys()
        .map(|k| k.as_str())
        .find(|k| QUORUM_UNSUPPORTED.contains(k))
    {
        return Err(AmqpError::precondition_failed(format!(
            "invalid arg '{k}' for {resource} of queue type rabbit_quorum_queue"
        )));
    }
    if server_named {
        return Err(AmqpError::precondition_failed(
            "Cannot declare a server-named queue for type rabbit_quorum_queue",
        ));
    }
    let property = if def.auto_delete {
        Some("auto-delete")
    } else if def.exclusive {
        Some("exclusive-owner")
    } else if !def.durable {
        Some("non-durable")
    } else {
        None
    };
    match property {
        Some(p) => Err(AmqpError::precondition_failed(format!(
            "invalid property '{p}' for {resource}"
        ))),
        None => Ok(()),
    }
}

/// The redeclare checks RabbitMQ 3.10.8 words its own way (observed): `x-queue-type`
/// `classic` is the same as none; two different types, or two different delivery limits of a
/// quorum queue, read `received 'new' but current is 'old'`; other differences have the
/// long form of [`crate::args::assert_equivalent`].
pub fn assert_type_equivalent(
    current: &super::Queue,
    received: &FieldTable,
    resource: &str,
) -> Result<(), AmqpError> {
    let get = |t: &FieldTable, k: &str| t.inner().get(k).cloned();
    let mut keys = vec![(
        "x-queue-type",
        get(&current.def.arguments, "x-queue-type"),
        get(received, "x-queue-type"),
    )];
    if current.args.quorum {
        keys.push((
            "x-delivery-limit",
            get(&current.def.arguments, "x-delivery-limit"),
            get(received, "x-delivery-limit"),
        ));
    }
    let classic = |v: &AMQPValue| as_str_bytes(v) == Some(b"classic");
    for (key, cur, new) in keys {
        match (&cur, &new) {
            (None, None) => {}
            (None, Some(v)) | (Some(v), None) if key == "x-queue-type" && classic(v) => {}
            (Some(a), Some(b)) if crate::args::values_equal(a, b) => {}
            (Some(a), Some(b)) => {
                return Err(AmqpError::precondition_failed(format!(
                    "inequivalent arg '{key}' for {resource}: received '{}' but current is '{}'",
                    format_value(b),
                    format_value(a)
                )));
            }
            _ => {
                let mut c = FieldTable::default();
                let mut r = FieldTable::default();
                if let Some(a) = cur {
                    c.insert(key.into(), a);
                }
                if let Some(b) = new {
                    r.insert(key.into(), b);
                }
                crate::args::assert_equivalent(&c, &r, &[key], resource)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn one(k: &str, v: AMQPValue) -> Result<QueueArgs, AmqpError> {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        QueueArgs::parse(&t, "queue 'q' in vhost '/'")
    }

    #[test]
    fn policy_precedence_is_rabbitmqs() {
        // Recorded from RabbitMQ 3.10.8 (integration/python/test_policies.py runs against both).
        let pol = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let merged = merge_policies(
            Some(&pol(
                serde_json::json!({"max-length": 5, "dead-letter-exchange": "p"}),
            )),
            Some(&pol(
                serde_json::json!({"max-length": 2, "message-ttl": 100}),
            )),
        );
        assert_eq!(
            serde_json::Value::Object(merged.clone()),
            serde_json::json!({"max-length": 2, "dead-letter-exchange": "p", "message-ttl": 100})
        );
        let mut declared = FieldTable::default();
        declared.insert("x-max-length".into(), AMQPValue::LongInt(8));
        declared.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("arg")),
        );
        let args = QueueArgs::extract(&declared).with_policy(&declared, &merged);
        assert_eq!(args.max_length, Some(2), "the lower limit");
        assert_eq!(
            args.message_ttl,
            Some(100),
            "the policy fills what the arguments leave"
        );
        assert_eq!(
            args.dead_letter_exchange.as_deref(),
            Some("arg"),
            "the argument wins"
        );
        let none = QueueArgs::extract(&FieldTable::default()).with_policy(
            &FieldTable::default(),
            &pol(serde_json::json!({"overflow": "reject-publish"})),
        );
        assert_eq!(none.overflow, Overflow::RejectPublish);
    }

    #[test]
    fn rabbitmq_error_terms() {
        let e = one("x-message-ttl", AMQPValue::LongInt(-1)).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        let e = one(
            "x-message-ttl",
            AMQPValue::LongString(LongString::from("x")),
        )
        .unwrap_err();
        assert!(
            e.text.ends_with(": \"expected integer, got longstr\""),
            "{}",
            e.text
        );
        let e = one("x-expires", AMQPValue::LongInt(0)).unwrap_err();
        assert!(e.text.ends_with("{value_zero,0}"));
        let e = one("x-max-priority", AMQPValue::LongInt(256)).unwrap_err();
        assert!(e.text.ends_with("{max_value_exceeded,256}"));
        let e = one(
            "x-overflow",
            AMQPValue::LongString(LongString::from("nope")),
        )
        .unwrap_err();
        assert!(e.text.ends_with("invalid_overflow"));
        let e = one(
            "x-dead-letter-routing-key",
            AMQPValue::LongString(LongString::from("k")),
        )
        .unwrap_err();
        assert!(e.text.ends_with("routing_key_but_no_dlx_defined"));
        assert_eq!(
            one("x-max-length", AMQPValue::ShortShortUInt(5))
                .unwrap()
                .max_length,
            Some(5)
        );
        assert!(
            one("x-single-active-consumer", AMQPValue::Boolean(true))
                .unwrap()
                .single_active_consumer
        );
        assert!(one("x-unknown-thing", AMQPValue::LongInt(-5)).is_ok());
    }
}
