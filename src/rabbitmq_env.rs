//! RabbitMQ's own ways of configuring a node, for images and test containers that set them:
//! the environment variables of the official image (`RABBITMQ_DEFAULT_USER`,
//! `RABBITMQ_DEFAULT_PASS`, `RABBITMQ_DEFAULT_VHOST`, `RABBITMQ_NODE_PORT`, the
//! `RABBITMQ_SSL_*` set) and a `rabbitmq.conf` file in its sysctl format named by
//! `RABBITMQ_CONFIG_FILE` (with or without `.conf`), for the keys Warren has. They apply after
//! `broker.toml` and before Warren's own `WARREN_*` variables and flags; the file after the
//! variables (testcontainers' Go module sets both, and its file holds the user it logs in as).

use crate::config::{Config, User};

/// What was applied and what was not understood (for the log).
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Settings taken, as `NAME` or `file: key`.
    pub taken: Vec<String>,
    /// Keys of the file Warren does not have (ignored).
    pub ignored: Vec<String>,
}

/// Apply RabbitMQ's variables (read through `get`) and the file `RABBITMQ_CONFIG_FILE` names.
pub fn apply(config: &mut Config, get: &dyn Fn(&str) -> Option<String>) -> Result<Applied, String> {
    let mut out = Applied::default();
    let get = |k: &str| get(k).filter(|v| !v.is_empty());
    let user = get("RABBITMQ_DEFAULT_USER");
    let pass = get("RABBITMQ_DEFAULT_PASS");
    if user.is_some() || pass.is_some() {
        set_default_user(config, user.as_deref(), pass.as_deref());
        out.taken.push("RABBITMQ_DEFAULT_USER/PASS".into());
    }
    if let Some(v) = get("RABBITMQ_DEFAULT_VHOST") {
        set_default_vhost(config, &v);
        out.taken.push("RABBITMQ_DEFAULT_VHOST".into());
    }
    if let Some(p) = get("RABBITMQ_NODE_PORT") {
        config.amqp.port = p
            .parse()
            .map_err(|_| format!("RABBITMQ_NODE_PORT: '{p}' is not a port"))?;
        out.taken.push("RABBITMQ_NODE_PORT".into());
    }
    // The official image's TLS variables (testcontainers' Java module sets them).
    if let (Some(cert), Some(key)) = (get("RABBITMQ_SSL_CERTFILE"), get("RABBITMQ_SSL_KEYFILE")) {
        config.tls.cert_file = Some(cert.into());
        config.tls.key_file = Some(key.into());
        config.tls.ca_file = get("RABBITMQ_SSL_CACERTFILE").map(Into::into);
        config.tls.verify_peer = get("RABBITMQ_SSL_VERIFY").as_deref() == Some("verify_peer");
        config.tls.fail_if_no_peer_cert =
            get("RABBITMQ_SSL_FAIL_IF_NO_PEER_CERT").as_deref() == Some("true");
        config.amqps.enabled = true;
        out.taken.push("RABBITMQ_SSL_*".into());
    }
    if let Some(path) = get("RABBITMQ_CONFIG_FILE") {
        let candidates = [path.clone(), format!("{path}.conf")];
        let found = candidates
            .iter()
            .find(|p| std::path::Path::new(p).is_file() && !p.ends_with(".config"));
        match found {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
                apply_conf(config, &text, &mut out).map_err(|e| format!("{p}: {e}"))?;
            }
            None if path.ends_with(".config") => {
                out.ignored.push(format!(
                    "{path}: the Erlang-term config format is not supported (use rabbitmq.conf's)"
                ));
            }
            None => out.ignored.push(format!("{path}: no such file")),
        }
    }
    Ok(out)
}

/// The default user, as the official image makes it: an administrator with full
/// permissions on every vhost, replacing `guest` (a password alone keeps `guest`).
fn set_default_user(config: &mut Config, user: Option<&str>, pass: Option<&str>) {
    let name = user.unwrap_or("guest").to_string();
    config.users = vec![User {
        name,
        password: Some(pass.unwrap_or("guest").to_string()),
        password_hash: None,
        hashing_algorithm: "rabbit_password_hashing_sha256".into(),
        tags: vec!["administrator".into()],
        vhosts: vec!["*".into()],
    }];
}

fn set_default_vhost(config: &mut Config, vhost: &str) {
    config.default_vhost = vhost.to_string();
    if !config.vhosts.iter().any(|v| v == vhost) {
        config.vhosts.push(vhost.to_string());
    }
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{key}: '{v}' is not true or false")),
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{key}: '{v}' is not a number"))
}

/// A port from `5672` or `0.0.0.0:5672` / `:::5672`.
fn port(key: &str, v: &str) -> Result<u16, String> {
    number(key, v.rsplit(':').next().unwrap_or(v))
}

/// Apply a `rabbitmq.conf` (sysctl format: `key = value` lines, `#` comments).
pub fn apply_conf(config: &mut Config, text: &str, out: &mut Applied) -> Result<(), String> {
    let mut user = None;
    let mut pass = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("'{line}' is not a key = value line"));
        };
        let (k, v) = (k.trim(), v.trim());
        let taken = match k {
            "default_user" => {
                user = Some(v.to_string());
                true
            }
            "default_pass" => {
                pass = Some(v.to_string());
                true
            }
            "default_vhost" => {
                set_default_vhost(config, v);
                true
            }
            "loopback_users" if v == "none" => {
                config.loopback_users.clear();
                true
            }
            _ if k.starts_with("loopback_users.") => {
                let name = &k["loopback_users.".len()..];
                config.loopback_users.retain(|u| u != name);
                if boolean(k, v)? {
                    config.loopback_users.push(name.to_string());
                }
                true
            }
            "listeners.tcp" if v == "none" => {
                // Warren always listens for plain AMQP; the port stays the configured one.
                out.ignored
                    .push(format!("{k} = {v} (the AMQP listener stays on)"));
                false
            }
            "listeners.tcp.default" | "listeners.tcp.1" => {
                config.amqp.port = port(k, v)?;
                true
            }
            "listeners.ssl.default" | "listeners.ssl.1" => {
                config.amqps.enabled = true;
                config.amqps.port = port(k, v)?;
                true
            }
            "ssl_options.cacertfile" => {
                config.tls.ca_file = Some(v.into());
                true
            }
            "ssl_options.certfile" => {
                config.tls.cert_file = Some(v.into());
                true
            }
            "ssl_options.keyfile" => {
                config.tls.key_file = Some(v.into());
                true
            }
            "ssl_options.verify" => {
                config.tls.verify_peer = v == "verify_peer";
                true
            }
            "ssl_options.fail_if_no_peer_cert" => {
                config.tls.fail_if_no_peer_cert = boolean(k, v)?;
                true
            }
            "management.tcp.port" | "management.listener.port" => {
                config.management.enabled = true;
                config.management.port = port(k, v)?;
                true
            }
            "management.tcp.ip" | "management.listener.ip" => {
                config.management.bind = v.to_string();
                true
            }
            "prometheus.tcp.port" => {
                config.prometheus.enabled = true;
                config.prometheus.port = port(k, v)?;
                true
            }
            "consumer_timeout" => {
                config.consumer_timeout = number(k, v)?;
                true
            }
            "vm_memory_high_watermark.relative" => {
                config.memory.high_watermark = number(k, v)?;
                true
            }
            "vm_memory_high_watermark.absolute" => {
                config.memory.high_watermark_bytes = number(k, v)?;
                true
            }
            "disk_free_limit.absolute" => {
                config.disk.free_limit = number(k, v)?;
                true
            }
            "load_definitions" => {
                config.load_definitions = Some(v.into());
                true
            }
            "log.console.level" | "log.default.level" => {
                config.log_level = match v {
                    "warning" => "warn".into(),
                    "critical" | "alert" | "emergency" => "error".into(),
                    "notice" => "info".into(),
                    other => other.to_string(),
                };
                true
            }
            "channel_max" => {
                config.limits.channel_max = number(k, v)?;
                true
            }
            "frame_max" => {
                config.limits.frame_max = number(k, v)?;
                true
            }
            "heartbeat" => {
                config.limits.heartbeat = number(k, v)?;
                true
            }
            "connection_max" => {
                config.connection_max = if v == "infinity" { 0 } else { number(k, v)? };
                true
            }
            _ => {
                out.ignored.push(k.to_string());
                false
            }
        };
        if taken {
            out.taken.push(format!("rabbitmq.conf: {k}"));
        }
    }
    if user.is_some() || pass.is_some() {
        // The file's user wins over the variables' (testcontainers' Go module sets both).
        let cur = config
            .users
            .first()
            .map(|u| (u.name.clone(), u.password.clone()));
        let name = user.or_else(|| cur.as_ref().map(|c| c.0.clone()));
        let pw = pass.or_else(|| cur.and_then(|c| c.1));
        set_default_user(config, name.as_deref(), pw.as_deref());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_official_images_variables() {
        let mut c = Config::default();
        apply(
            &mut c,
            &env(&[
                ("RABBITMQ_DEFAULT_USER", "admin"),
                ("RABBITMQ_DEFAULT_PASS", "s3cret"),
                ("RABBITMQ_DEFAULT_VHOST", "app"),
                ("RABBITMQ_NODE_PORT", "5673"),
            ]),
        )
        .unwrap();
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.users[0].name, "admin");
        assert_eq!(c.users[0].password.as_deref(), Some("s3cret"));
        assert_eq!(c.users[0].tags, ["administrator"]);
        assert_eq!(c.default_vhost, "app");
        assert!(c.vhosts.contains(&"app".to_string()));
        assert_eq!(c.amqp.port, 5673);
        // A password alone keeps guest.
        let mut c = Config::default();
        apply(&mut c, &env(&[("RABBITMQ_DEFAULT_PASS", "pw")])).unwrap();
        assert_eq!(
            (c.users[0].name.as_str(), c.users[0].password.as_deref()),
            ("guest", Some("pw"))
        );
        let e = apply(&mut c, &env(&[("RABBITMQ_NODE_PORT", "x")])).unwrap_err();
        assert!(e.contains("RABBITMQ_NODE_PORT"));
    }

    #[test]
    fn a_rabbitmq_conf_as_testcontainers_go_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rabbitmq-testcontainers.conf");
        std::fs::write(
            &file,
            "# written by the module\nloopback_users.guest = false\ndefault_user = admin\ndefault_pass = password\n\
             listeners.ssl.default = 5671\nssl_options.certfile = /etc/rabbitmq/rabbitmq_cert.pem\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n\
             management.tcp.port = 15672\ncluster_formation.peer_discovery_backend = classic_config\n",
        )
        .unwrap();
        let mut c = Config::default();
        let path = file.to_str().unwrap().to_string();
        let out = apply(
            &mut c,
            &env(&[
                ("RABBITMQ_DEFAULT_USER", "guest"),
                ("RABBITMQ_DEFAULT_PASS", "guest"),
                ("RABBITMQ_CONFIG_FILE", path.trim_end_matches(".conf")),
            ]),
        )
        .unwrap();
        // The file's user wins.
        assert_eq!(
            (c.users[0].name.as_str(), c.users[0].password.as_deref()),
            ("admin", Some("password"))
        );
        assert!(c.loopback_users.is_empty());
        assert!(c.amqps.enabled && c.amqps.port == 5671);
        assert!(c.tls.verify_peer && c.tls.fail_if_no_peer_cert);
        assert!(c.management.enabled && c.management.port == 15672);
        assert_eq!(out.ignored, ["cluster_formation.peer_discovery_backend"]);
        let mut c = Config::default();
        let mut out = Applied::default();
        assert!(apply_conf(&mut c, "consumer_timeout = soon\n", &mut out).is_err());
        assert!(apply_conf(&mut c, "no equals sign\n", &mut out).is_err());
    }
}
