//! Permissions as RabbitMQ's internal backend checks them: three regular expressions per user
//! per vhost (configure, write, read), matched unanchored against a resource name (the
//! default exchange is `amq.default`); an empty pattern means `^$` (nothing). Topic
//! permissions add write/read patterns on routing keys of topic exchanges, with `{username}`
//! and `{vhost}` expanded before matching.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Which permission an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// Declare and delete.
    Configure,
    /// Publish to an exchange; bind to a queue or exchange.
    Write,
    /// Consume, get, purge; bind from an exchange.
    Read,
}

/// A compiled permission pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    /// `None` for `.*`, which matches every name (the common case costs no regex run).
    re: Option<Regex>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Pattern {
    /// Compile `source` as RabbitMQ would use it (empty = `^$`). The error is RabbitMQ's
    /// management reason for a pattern it cannot compile.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let re = match source {
            ".*" => None,
            "" => Some(Regex::new("^$").expect("valid")),
            s => Some(
                regex::RegexBuilder::new(s)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid_regexp: {s}: {e}"))?,
            ),
        };
        Ok(Pattern {
            source: source.to_string(),
            re,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether every name matches (`.*`).
    pub fn matches_all(&self) -> bool {
        self.re.is_none()
    }

    /// Whether `name` matches (anywhere, as Erlang's `re:run`).
    pub fn matches(&self, name: &str) -> bool {
        match &self.re {
            None => true,
            Some(re) => re.is_match(name),
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A user's permissions in one vhost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Permission {
    /// Declare/delete queues and exchanges whose names match.
    pub configure: Pattern,
    /// Publish to exchanges, bind to queues/exchanges whose names match.
    pub write: Pattern,
    /// Consume from queues, bind from exchanges whose names match.
    pub read: Pattern,
}

impl Permission {
    /// `.*` for all three.
    pub fn all() -> Permission {
        let p = Pattern::new(".*").expect("valid");
        Permission {
            configure: p.clone(),
            write: p.clone(),
            read: p,
        }
    }

    /// Whether `perm` is granted on a resource called `name`.
    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        match perm {
            Perm::Configure => self.configure.matches(name),
            Perm::Write => self.write.matches(name),
            Perm::Read => self.read.matches(name),
        }
    }
}

/// Write/read patterns on the routing keys of one topic exchange (RabbitMQ 3.7+).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPermission {
    /// The exchange they apply to.
    pub exchange: String,
    /// Routing keys that may be published with.
    pub write: String,
    /// Routing keys that may be bound with.
    pub read: String,
}

/// A topic permission compiled for one user and vhost (variables expanded).
#[derive(Clone, Debug)]
pub struct CompiledTopic {
    write: Option<Pattern>,
    read: Option<Pattern>,
}

impl TopicPermission {
    /// Expand `{username}` and `{vhost}` and compile; a pattern that does not compile after
    /// expansion denies everything (RabbitMQ's `re:run` would fail the check too).
    pub fn compile(&self, user: &str, vhost: &str) -> CompiledTopic {
        let one = |p: &str| {
            let expanded = p.replace("{username}", user).replace("{vhost}", vhost);
            Pattern::new(&expanded).ok()
        };
        CompiledTopic {
            write: one(&self.write),
            read: one(&self.read),
        }
    }
}

impl CompiledTopic {
    /// Whether `routing_key` may be used for `perm` (write: publish, read: bind).
    pub fn allows(&self, perm: Perm, routing_key: &str) -> bool {
        let p = match perm {
            Perm::Write => &self.write,
            _ => &self.read,
        };
        p.as_ref().is_some_and(|p| p.matches(routing_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_rabbitmq() {
        assert!(Pattern::new(".*").unwrap().matches("anything"));
        // Unanchored, as Erlang's re:run.
        assert!(Pattern::new("orders").unwrap().matches("my-orders-q"));
        assert!(!Pattern::new("^orders$").unwrap().matches("my-orders"));
        // Empty means nothing (^$); it still matches an empty name.
        let empty = Pattern::new("").unwrap();
        assert!(!empty.matches("q"));
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn topic_variables_are_expanded() {
        let t = TopicPermission {
            exchange: "amq.topic".into(),
            write: "^w\\.{username}".into(),
            read: "^r\\.{vhost}".into(),
        }
        .compile("u", "/");
        assert!(t.allows(Perm::Write, "w.u.x"));
        assert!(!t.allows(Perm::Write, "w.x"));
        assert!(t.allows(Perm::Read, "r./"));
        assert!(!t.allows(Perm::Read, "r.x"));
    }
}
