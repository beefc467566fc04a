//! Policies, operator policies and runtime parameters: stored with the rest of the metadata
//! and validated as RabbitMQ 3.10.8 validates them (texts recorded from its management API).
//! They are stored and listed; applying policies to queues and exchanges is the policies
//! issue's work.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A policy or operator policy, as `GET /api/policies` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// A regular expression on queue or exchange names.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    #[serde(rename = "apply-to")]
    pub apply_to: String,
    /// The keys it sets.
    pub definition: Map<String, Value>,
    /// Highest wins.
    pub priority: i64,
}

/// A vhost-scoped runtime parameter (`GET /api/parameters`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParameterDef {
    /// Its value.
    pub value: Value,
    /// Its vhost.
    pub vhost: String,
    /// Its component (`shovel`, `federation-upstream`, ...).
    pub component: String,
    /// Its name.
    pub name: String,
}

/// A global runtime parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalParameterDef {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: Value,
}

impl PolicyDef {
    /// Compiled for matching (a pattern that no longer compiles matches nothing).
    fn compile(&self) -> Option<crate::defs::Policy> {
        Some(crate::defs::Policy {
            name: self.name.clone(),
            pattern: regex::Regex::new(&self.pattern).ok()?,
            queues: matches!(self.apply_to.as_str(), "queues" | "all"),
            exchanges: matches!(self.apply_to.as_str(), "exchanges" | "all"),
            priority: self.priority,
            definition: self.definition.clone(),
        })
    }
}

/// The policies and operator policies of `vhost`, compiled.
pub(crate) fn for_vhost(data: &super::AuthData, vhost: &str) -> crate::defs::Policies {
    let of = |m: &std::collections::BTreeMap<(String, String), PolicyDef>| {
        m.values()
            .filter(|p| p.vhost == vhost)
            .filter_map(PolicyDef::compile)
            .collect()
    };
    crate::defs::Policies {
        policies: of(&data.policies),
        operator: of(&data.operator_policies),
    }
}

/// A JSON value as Erlang's `~p` prints the term RabbitMQ decoded it to.
pub(crate) fn erlang_term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(erlang_term).collect::<Vec<_>>().join(",")
        ),
        Value::Object(o) => format!(
            "[{}]",
            o.iter()
                .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn non_neg(v: &Value) -> bool {
    v.as_u64().is_some()
}

/// Keys an operator policy may set (RabbitMQ 3.10.8).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Check one policy key; `Ok(false)` if the key is not a policy setting at all.
fn check_key(key: &str, v: &Value) -> Result<bool, String> {
    let one_of = |allowed: &[&str]| v.as_str().is_some_and(|s| allowed.contains(&s));
    let (ok, what) = match key {
        "alternate-exchange" => (v.is_string(), "alternate exchange name"),
        "dead-letter-exchange" => (v.is_string(), "dead letter exchange name"),
        "dead-letter-routing-key" => (v.is_string(), "dead letter routing key"),
        "dead-letter-strategy" => (
            one_of(&["at-most-once", "at-least-once"]),
            "dead letter strategy",
        ),
        "message-ttl" => (non_neg(v), "message TTL"),
        "expires" => (v.as_u64().is_some_and(|n| n >= 1), "queue expiry"),
        "max-length" => (non_neg(v), "maximum length"),
        "max-length-bytes" => (non_neg(v), "maximum length in bytes"),
        "max-in-memory-length" => (non_neg(v), "maximum memory in bytes"),
        "max-in-memory-bytes" => (non_neg(v), "maximum memory in bytes"),
        "delivery-limit" => (non_neg(v), "delivery limit"),
        // RabbitMQ 3.12+ (with `x-consumer-timeout`, which Warren follows too).
        "consumer-timeout" => (non_neg(v), "consumer timeout"),
        "overflow" => (
            one_of(&["drop-head", "reject-publish", "reject-publish-dlx"]),
            "overflow value",
        ),
        "queue-mode" => (one_of(&["default", "lazy"]), "queue-mode value"),
        "queue-version" => (
            matches!(v.as_u64(), Some(1) | Some(2)),
            "queue-version value",
        ),
        "ha-mode" => (one_of(&["all", "exactly", "nodes"]), "ha-mode value"),
        // Accepted and kept (mirroring, locators, streams): meaningless on one node.
        "ha-params"
        | "ha-sync-mode"
        | "ha-sync-batch-size"
        | "ha-promote-on-shutdown"
        | "ha-promote-on-failure"
        | "queue-master-locator"
        | "queue-leader-locator"
        | "max-age"
        | "stream-max-segment-size-bytes" => (true, ""),
        _ => return Ok(false),
    };
    if ok {
        Ok(true)
    } else {
        Err(format!("{} is not a valid {what}", erlang_term(v)))
    }
}

/// Validate a `PUT /api/policies/{vhost}/{name}` body (or `operator`-policies); returns the
/// policy, or RabbitMQ's reason text (not yet HTML-escaped).
pub(crate) fn validate(
    vhost: &str,
    name: &str,
    body: &Value,
    operator: bool,
) -> Result<PolicyDef, String> {
    let Some(obj) = body.as_object() else {
        return Err("[{key_missing,pattern}]".into());
    };
    let Some(pattern) = obj.get("pattern") else {
        return Err("[{key_missing,pattern}]".into());
    };
    let Some(definition) = obj.get("definition") else {
        return Err("[{key_missing,definition}]".into());
    };
    let mut errors = Vec::new();
    let pattern = match pattern.as_str() {
        Some(p) => {
            if let Err(e) = regex::Regex::new(p) {
                errors.push(format!(
                    "pattern should be regular expression but is invalid: {}",
                    regex_error(&e)
                ));
            }
            p.to_string()
        }
        None => {
            errors.push(format!(
                "pattern should be a string, actually was {}",
                erlang_term(pattern)
            ));
            String::new()
        }
    };
    let apply_to = match obj.get("apply-to") {
        None => "all".to_string(),
        Some(Value::String(s)) if ["queues", "exchanges", "all"].contains(&s.as_str()) => s.clone(),
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| erlang_term(other), String::from);
            errors.push(format!(
                "apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'"
            ));
            String::new()
        }
    };
    let definition = definition.as_object().cloned().unwrap_or_default();
    if definition.is_empty() {
        errors.push("no policy provided".into());
    }
    let priority = match obj.get("priority") {
        None => 0,
        Some(v) => match v.as_i64() {
            Some(n) => n,
            None => {
                errors.push(format!(
                    "priority should be a number, actually was {}",
                    erlang_term(v)
                ));
                0
            }
        },
    };
    let mut unknown = Vec::new();
    for (k, v) in &definition {
        if operator && !OPERATOR_KEYS.contains(&k.as_str()) {
            unknown.push(format!("{{<<\"{k}\">>,{}}}", erlang_term(v)));
            continue;
        }
        match check_key(k, v) {
            Ok(true) => {}
            Ok(false) => unknown.push(format!("{{<<\"{k}\">>,{}}}", erlang_term(v))),
            Err(e) => errors.push(e),
        }
    }
    if !unknown.is_empty() {
        errors.push(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        ));
    }
    if !errors.is_empty() {
        return Err(format!("Validation failed\n\n{}\n", errors.join("\n")));
    }
    Ok(PolicyDef {
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern,
        apply_to,
        definition,
        priority,
    })
}

/// A regex error in the spirit of Erlang's `re` (the exact PCRE text and offset differ).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or("").trim();
    let last = last.strip_prefix("error: ").unwrap_or(last);
    format!("{{\"{last}\",0}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn texts_are_rabbitmqs() {
        // Recorded from RabbitMQ 3.10.8's management API (before HTML escaping).
        let v = |d: Value| validate("/", "p", &json!({"pattern": "^a", "definition": d}), false);
        assert_eq!(
            v(json!({"max-length": "abc"})).unwrap_err(),
            "Validation failed\n\n<<\"abc\">> is not a valid maximum length\n"
        );
        assert_eq!(
            v(json!({"foo-bar": 1})).unwrap_err(),
            "Validation failed\n\n[{<<\"foo-bar\">>,1}] are not recognised policy settings\n"
        );
        assert_eq!(
            v(json!({"expires": 0})).unwrap_err(),
            "Validation failed\n\n0 is not a valid queue expiry\n"
        );
        assert_eq!(
            v(json!({})).unwrap_err(),
            "Validation failed\n\nno policy provided\n"
        );
        assert_eq!(
            validate("/", "p", &json!({"definition": {"max-length": 1}}), false).unwrap_err(),
            "[{key_missing,pattern}]"
        );
        assert_eq!(
            validate("/", "p", &json!({"pattern": "x"}), false).unwrap_err(),
            "[{key_missing,definition}]"
        );
        let bad_apply =
            json!({"pattern": "x", "definition": {"max-length": 1}, "apply-to": "nope"});
        assert_eq!(
            validate("/", "p", &bad_apply, false).unwrap_err(),
            "Validation failed\n\napply-to 'nope' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
        );
        let op = json!({"pattern": "x", "definition": {"overflow": "drop-head"}});
        assert_eq!(
            validate("/", "p", &op, true).unwrap_err(),
            "Validation failed\n\n[{<<\"overflow\">>,<<\"drop-head\">>}] are not recognised policy settings\n"
        );
        // Not a policy key in any version (an argument only).
        assert_eq!(
            v(json!({"single-active-consumer": true})).unwrap_err(),
            "Validation failed\n\n[{<<\"single-active-consumer\">>,true}] are not recognised policy settings\n"
        );
        // 3.12+: a non-negative integer.
        assert!(v(json!({"consumer-timeout": 60000})).is_ok());
        assert!(v(json!({"consumer-timeout": -1})).is_err());
        let ok = v(json!({"max-length": 100, "dead-letter-exchange": "dlx"})).unwrap();
        assert_eq!((ok.apply_to.as_str(), ok.priority), ("all", 0));
    }
}
