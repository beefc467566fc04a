//! Command-line tools beside the broker, all through the management API:
//! - `warren reset` and `warren clock` (the test environment's reset and manual clock);
//! - when the binary is invoked under their names (symlinks, as in the container image):
//!   `rabbitmqadmin` (v1's `declare` / `delete` / `list` / `purge` syntax, which the
//!   testcontainers RabbitMQ modules run inside the container), `rabbitmq-plugins` (plugins
//!   are built in: `enable` and friends succeed), and `rabbitmqctl` (the common listing and
//!   user, vhost and permission commands, `await_startup`, `ping`, `status`; also as
//!   `rabbitmq-diagnostics`, the image's health check).
//!
//! Connection: `--url` (or `-H`/`-P`), else `WARREN_MANAGEMENT_URL`, else
//! `http://127.0.0.1:$WARREN_MANAGEMENT_PORT` (15672); credentials `-u`/`-p`, else
//! `RABBITMQ_DEFAULT_USER`/`RABBITMQ_DEFAULT_PASS`, else guest/guest.

use serde_json::{Map, Value, json};
use std::process::ExitCode;

/// The management API as a client sees it.
pub struct Api {
    base: String,
    user: String,
    pass: String,
    agent: ureq::Agent,
}

/// Connection options common to every tool.
#[derive(Default, Clone)]
pub struct Conn {
    /// Base URL of the management API.
    pub url: Option<String>,
    /// Host (`-H`).
    pub host: Option<String>,
    /// Port (`-P`).
    pub port: Option<u16>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub pass: Option<String>,
}

impl Api {
    /// A client for the API `conn` (or the environment) names.
    pub fn new(conn: &Conn) -> Api {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let base = match (&conn.url, &conn.host, conn.port) {
            (Some(u), _, _) => u.clone(),
            (None, None, None) => env("WARREN_MANAGEMENT_URL").unwrap_or_else(|| {
                let port = env("WARREN_MANAGEMENT_PORT").unwrap_or_else(|| "15672".into());
                format!("http://127.0.0.1:{port}")
            }),
            (None, host, port) => format!(
                "http://{}:{}",
                host.as_deref().unwrap_or("127.0.0.1"),
                port.unwrap_or(15672)
            ),
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build();
        Api {
            base: base.trim_end_matches('/').to_string(),
            user: conn
                .user
                .clone()
                .or_else(|| env("RABBITMQ_DEFAULT_USER"))
                .unwrap_or_else(|| "guest".into()),
            pass: conn
                .pass
                .clone()
                .or_else(|| env("RABBITMQ_DEFAULT_PASS"))
                .unwrap_or_else(|| "guest".into()),
            agent: config.into(),
        }
    }

    /// One request; the status and the body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), String> {
        use base64::Engine;
        let url = format!("{}{path}", self.base);
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.pass))
        );
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (m, b) => {
                let text = b.map(Value::to_string).unwrap_or_default();
                let req = if m == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                req.header("Authorization", &auth)
                    .header("content-type", "application/json")
                    .send(text.as_bytes())
            }
        };
        let mut resp = result.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, text))
    }

    /// A request that must succeed (2xx); the body as JSON (`null` if empty).
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let (status, text) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            return Err(format!("{method} {path}: HTTP {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// `/`-safe path segment.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("*** {e}");
            ExitCode::FAILURE
        }
    }
}

/// `warren reset`: `POST /api/warren/reset`, for everything or one vhost.
pub fn reset(conn: &Conn, vhost: Option<&str>) -> ExitCode {
    let api = Api::new(conn);
    let body = match vhost {
        Some(v) => json!({ "vhost": v }),
        None => json!({}),
    };
    finish(
        api.ok("POST", "/api/warren/reset", Some(&body))
            .map(|v| println!("{v}")),
    )
}

/// `warren clock`: show the broker's clock, or advance the manual test clock.
pub fn clock(conn: &Conn, advance_ms: Option<u64>) -> ExitCode {
    let api = Api::new(conn);
    let r = match advance_ms {
        Some(ms) => api.ok(
            "POST",
            "/api/warren/clock",
            Some(&json!({ "advance_ms": ms })),
        ),
        None => api.ok("GET", "/api/warren/clock", None),
    };
    finish(r.map(|v| println!("{v}")))
}

/// The tool this binary runs as, from the name it was invoked under.
pub fn invoked_as(argv0: &str) -> Option<&'static str> {
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    [
        "rabbitmqadmin",
        "rabbitmqctl",
        "rabbitmq-plugins",
        "rabbitmq-diagnostics",
    ]
    .into_iter()
    .find(|t| *t == name)
}

/// Run `tool` with `args` (after the program name).
pub fn run(tool: &str, args: &[String]) -> ExitCode {
    let (conn, vhost, rest) = parse_common(args);
    match tool {
        "rabbitmqadmin" => finish(admin(&Api::new(&conn), vhost.as_deref(), &rest)),
        "rabbitmqctl" | "rabbitmq-diagnostics" => {
            finish(ctl(&Api::new(&conn), vhost.as_deref(), &rest))
        }
        _ => finish(plugins(&rest)),
    }
}

/// Split the connection options (`-H`, `-P`, `-u`, `-p`, `-V`/`--vhost`, their `--long=`
/// forms, `-q`/`--quiet`) from the rest, wherever they are.
fn parse_common(args: &[String]) -> (Conn, Option<String>, Vec<String>) {
    let mut conn = Conn::default();
    let mut vhost = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    fn value<'a>(
        inline: Option<String>,
        it: &mut impl Iterator<Item = &'a String>,
    ) -> Option<String> {
        inline.or_else(|| it.next().cloned())
    }
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with('-') => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        match key {
            "-H" | "--host" => conn.host = value(inline, &mut it),
            "-P" | "--port" => conn.port = value(inline, &mut it).and_then(|p| p.parse().ok()),
            "-u" | "--username" => conn.user = value(inline, &mut it),
            "--password" => conn.pass = value(inline, &mut it),
            "-p" => {
                // rabbitmqctl's `-p` is the vhost, rabbitmqadmin's the password: each tool
                // reads it.
                rest.push("-p".into());
                if let Some(v) = value(inline, &mut it) {
                    rest.push(v);
                }
            }
            "-V" | "--vhost" => vhost = value(inline, &mut it),
            "--url" => conn.url = value(inline, &mut it),
            "--formatter" => {
                value(inline, &mut it);
            }
            "-q" | "--quiet" | "-s" | "--silent" => {}
            _ => rest.push(a.clone()),
        }
    }
    (conn, vhost, rest)
}

/// `key=value` arguments as JSON values: booleans and JSON for the keys that take JSON.
fn fields(args: &[String]) -> Map<String, Value> {
    let mut m = Map::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            continue;
        };
        let value = match (k, v) {
            (_, "true") => Value::Bool(true),
            (_, "false") => Value::Bool(false),
            ("arguments" | "definition" | "value", v) => {
                serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()))
            }
            ("priority", v) => v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n)),
            (_, v) => Value::String(v.into()),
        };
        m.insert(k.to_string(), value);
    }
    m
}

fn take_str(m: &mut Map<String, Value>, k: &str) -> Option<String> {
    match m.remove(k)? {
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// rabbitmqadmin v1: `declare|delete|list|purge <kind> key=value...`.
fn admin(api: &Api, vhost: Option<&str>, args: &[String]) -> Result<(), String> {
    // In rabbitmqadmin, `-p` is the password.
    let mut api_pass = None;
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-p" {
            api_pass = it.next().cloned();
        } else {
            words.push(a.clone());
        }
    }
    let owned;
    let api = match api_pass {
        Some(p) => {
            owned = Api {
                pass: p,
                agent: api.agent.clone(),
                base: api.base.clone(),
                user: api.user.clone(),
            };
            &owned
        }
        None => api,
    };
    let vh = vhost.unwrap_or("/");
    let (verb, kind) =
        match (words.first(), words.get(1)) {
            (Some(v), Some(k)) => (v.as_str(), k.as_str()),
            _ => return Err(
                "usage: rabbitmqadmin [options] declare|delete|list|purge <kind> [key=value ...]"
                    .into(),
            ),
        };
    let mut f = fields(&words[2..]);
    let name = take_str(&mut f, "name").unwrap_or_default();
    let v = enc(vh);
    match (verb, kind) {
        ("declare", "queue") => {
            let body = json!({
                "durable": f.remove("durable").unwrap_or(json!(true)),
                "auto_delete": f.remove("auto_delete").unwrap_or(json!(false)),
                "arguments": f.remove("arguments").unwrap_or(json!({})),
            });
            api.ok(
                "PUT",
                &format!("/api/queues/{v}/{}", enc(&name)),
                Some(&body),
            )?;
            println!("queue declared");
        }
        ("declare", "exchange") => {
            let body = json!({
                "type": f.remove("type").unwrap_or(json!("direct")),
                "durable": f.remove("durable").unwrap_or(json!(true)),
                "auto_delete": f.remove("auto_delete").unwrap_or(json!(false)),
                "internal": f.remove("internal").unwrap_or(json!(false)),
                "arguments": f.remove("arguments").unwrap_or(json!({})),
            });
            api.ok(
                "PUT",
                &format!("/api/exchanges/{v}/{}", enc(&name)),
                Some(&body),
            )?;
            println!("exchange declared");
        }
        ("declare", "binding") => {
            let source = take_str(&mut f, "source").unwrap_or_default();
            let dest = take_str(&mut f, "destination").unwrap_or_default();
            let t = match take_str(&mut f, "destination_type").as_deref() {
                Some("exchange") => "e",
                _ => "q",
            };
            let body = json!({
                "routing_key": take_str(&mut f, "routing_key").unwrap_or_default(),
                "arguments": f.remove("arguments").unwrap_or(json!({})),
            });
            let path = format!("/api/bindings/{v}/e/{}/{t}/{}", enc(&source), enc(&dest));
            api.ok("POST", &path, Some(&body))?;
            println!("binding declared");
        }
        ("declare", "vhost") => {
            api.ok(
                "PUT",
                &format!("/api/vhosts/{}", enc(&name)),
                Some(&json!({})),
            )?;
            println!("vhost declared");
        }
        ("declare", "user") => {
            let body = json!({
                "password": take_str(&mut f, "password").unwrap_or_default(),
                "tags": take_str(&mut f, "tags").unwrap_or_default(),
            });
            api.ok("PUT", &format!("/api/users/{}", enc(&name)), Some(&body))?;
            println!("user declared");
        }
        ("declare", "permission") => {
            let pv = take_str(&mut f, "vhost").unwrap_or_else(|| vh.to_string());
            let user = take_str(&mut f, "user").unwrap_or_default();
            let body = json!({
                "configure": take_str(&mut f, "configure").unwrap_or_default(),
                "write": take_str(&mut f, "write").unwrap_or_default(),
                "read": take_str(&mut f, "read").unwrap_or_default(),
            });
            api.ok(
                "PUT",
                &format!("/api/permissions/{}/{}", enc(&pv), enc(&user)),
                Some(&body),
            )?;
            println!("permission declared");
        }
        ("declare", "policy" | "operator_policy") => {
            let mut body = json!({
                "pattern": take_str(&mut f, "pattern").unwrap_or_default(),
                "definition": f.remove("definition").unwrap_or(json!({})),
                "priority": f.remove("priority").unwrap_or(json!(0)),
            });
            if let Some(a) = take_str(&mut f, "apply-to") {
                body["apply-to"] = json!(a);
            }
            let base = if kind == "policy" {
                "policies"
            } else {
                "operator-policies"
            };
            api.ok(
                "PUT",
                &format!("/api/{base}/{v}/{}", enc(&name)),
                Some(&body),
            )?;
            println!("{kind} declared");
        }
        ("declare", "parameter") => {
            let component = take_str(&mut f, "component").unwrap_or_default();
            let body = json!({ "value": f.remove("value").unwrap_or(Value::Null) });
            let path = format!("/api/parameters/{}/{v}/{}", enc(&component), enc(&name));
            api.ok("PUT", &path, Some(&body))?;
            println!("parameter declared");
        }
        ("declare", "vhost_limit") => {
            let lv = take_str(&mut f, "vhost").unwrap_or_else(|| vh.to_string());
            let value = f.remove("value").unwrap_or(Value::Null);
            let value = value
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .map_or(value, |n| json!(n));
            api.ok(
                "PUT",
                &format!("/api/vhost-limits/{}/{}", enc(&lv), enc(&name)),
                Some(&json!({ "value": value })),
            )?;
            println!("vhost_limit declared");
        }
        ("delete", "queue" | "exchange" | "user" | "vhost" | "policy" | "operator_policy") => {
            let path = match kind {
                "queue" => format!("/api/queues/{v}/{}", enc(&name)),
                "exchange" => format!("/api/exchanges/{v}/{}", enc(&name)),
                "user" => format!("/api/users/{}", enc(&name)),
                "vhost" => format!("/api/vhosts/{}", enc(&name)),
                "policy" => format!("/api/policies/{v}/{}", enc(&name)),
                _ => format!("/api/operator-policies/{v}/{}", enc(&name)),
            };
            api.ok("DELETE", &path, None)?;
            println!("{kind} deleted");
        }
        ("purge", "queue") => {
            api.ok(
                "DELETE",
                &format!("/api/queues/{v}/{}/contents", enc(&name)),
                None,
            )?;
            println!("queue purged");
        }
        ("list", what) => {
            let path = match what {
                "queues" | "exchanges" | "bindings" | "policies" => {
                    format!("/api/{what}/{v}")
                }
                "operator_policies" => format!("/api/operator-policies/{v}"),
                "users" | "vhosts" | "connections" | "channels" | "consumers" | "permissions" => {
                    format!("/api/{what}")
                }
                other => return Err(format!("list {other}: not supported")),
            };
            let rows = api.ok("GET", &path, None)?;
            for r in rows.as_array().into_iter().flatten() {
                let cols: Vec<String> = [
                    "vhost",
                    "name",
                    "source",
                    "destination",
                    "type",
                    "messages",
                    "user",
                ]
                .iter()
                .filter_map(|k| r.get(*k))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect();
                println!("{}", cols.join("\t"));
            }
        }
        (verb, kind) => return Err(format!("{verb} {kind}: not supported")),
    }
    Ok(())
}

/// rabbitmqctl: listings, users, vhosts, permissions, `await_startup`, `ping`, `status`.
fn ctl(api: &Api, vhost: Option<&str>, args: &[String]) -> Result<(), String> {
    // In rabbitmqctl, `-p` is the vhost.
    let mut vh = vhost.map(str::to_string);
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-p" {
            vh = it.next().cloned();
        } else if !a.starts_with("--") && a != "-n" {
            words.push(a.clone());
        } else if a == "-n" {
            it.next();
        }
    }
    let vh = vh.unwrap_or_else(|| "/".into());
    let v = enc(&vh);
    let Some(cmd) = words.first() else {
        return Err("usage: rabbitmqctl <command> [args]".into());
    };
    let arg = |i: usize| {
        words
            .get(i)
            .cloned()
            .ok_or_else(|| format!("{cmd}: missing argument"))
    };
    let table = |path: &str, default: &[&str]| -> Result<(), String> {
        let cols: Vec<String> = if words.len() > 1 {
            words[1..].to_vec()
        } else {
            default.iter().map(|s| s.to_string()).collect()
        };
        let rows = api.ok("GET", path, None)?;
        println!("{}", cols.join("\t"));
        for r in rows.as_array().into_iter().flatten() {
            let line: Vec<String> = cols
                .iter()
                .map(|c| match r.get(c.as_str()) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                })
                .collect();
            println!("{}", line.join("\t"));
        }
        Ok(())
    };
    match cmd.as_str() {
        "list_queues" => table(&format!("/api/queues/{v}"), &["name", "messages"])?,
        "list_exchanges" => table(&format!("/api/exchanges/{v}"), &["name", "type"])?,
        "list_bindings" => table(
            &format!("/api/bindings/{v}"),
            &["source", "destination", "routing_key"],
        )?,
        "list_users" => table("/api/users", &["name", "tags"])?,
        "list_vhosts" => table("/api/vhosts", &["name"])?,
        "list_connections" => table(
            "/api/connections",
            &["user", "peer_host", "peer_port", "state"],
        )?,
        "list_permissions" => table(
            &format!("/api/vhosts/{v}/permissions"),
            &["user", "configure", "write", "read"],
        )?,
        "add_user" => {
            let body = json!({"password": arg(2)?, "tags": ""});
            api.ok("PUT", &format!("/api/users/{}", enc(&arg(1)?)), Some(&body))?;
        }
        "change_password" => {
            let user = arg(1)?;
            let cur = api.ok("GET", &format!("/api/users/{}", enc(&user)), None)?;
            let body =
                json!({"password": arg(2)?, "tags": cur.get("tags").cloned().unwrap_or(json!(""))});
            api.ok("PUT", &format!("/api/users/{}", enc(&user)), Some(&body))?;
        }
        "set_user_tags" => {
            let user = arg(1)?;
            let cur = api.ok("GET", &format!("/api/users/{}", enc(&user)), None)?;
            let mut body = json!({"tags": words[2..].join(",")});
            if let Some(h) = cur.get("password_hash") {
                body["password_hash"] = h.clone();
                body["hashing_algorithm"] =
                    cur.get("hashing_algorithm").cloned().unwrap_or(Value::Null);
            }
            api.ok("PUT", &format!("/api/users/{}", enc(&user)), Some(&body))?;
        }
        "delete_user" => {
            api.ok("DELETE", &format!("/api/users/{}", enc(&arg(1)?)), None)?;
        }
        "add_vhost" => {
            api.ok(
                "PUT",
                &format!("/api/vhosts/{}", enc(&arg(1)?)),
                Some(&json!({})),
            )?;
        }
        "delete_vhost" => {
            api.ok("DELETE", &format!("/api/vhosts/{}", enc(&arg(1)?)), None)?;
        }
        "set_permissions" => {
            let body = json!({"configure": arg(2)?, "write": arg(3)?, "read": arg(4)?});
            api.ok(
                "PUT",
                &format!("/api/permissions/{v}/{}", enc(&arg(1)?)),
                Some(&body),
            )?;
        }
        "clear_permissions" => {
            api.ok(
                "DELETE",
                &format!("/api/permissions/{v}/{}", enc(&arg(1)?)),
                None,
            )?;
        }
        "set_policy" => {
            let body = json!({
                "pattern": arg(2)?,
                "definition": serde_json::from_str::<Value>(&arg(3)?).map_err(|e| e.to_string())?,
            });
            api.ok(
                "PUT",
                &format!("/api/policies/{v}/{}", enc(&arg(1)?)),
                Some(&body),
            )?;
        }
        "clear_policy" => {
            api.ok(
                "DELETE",
                &format!("/api/policies/{v}/{}", enc(&arg(1)?)),
                None,
            )?;
        }
        "purge_queue" => {
            api.ok(
                "DELETE",
                &format!("/api/queues/{v}/{}/contents", enc(&arg(1)?)),
                None,
            )?;
        }
        "delete_queue" => {
            api.ok(
                "DELETE",
                &format!("/api/queues/{v}/{}", enc(&arg(1)?)),
                None,
            )?;
        }
        "await_startup" | "wait" => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                if api.ok("GET", "/api/overview", None).is_ok() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err("the broker did not start within 60 s".into());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        "ping" | "status" | "node_health_check" | "check_running" | "check_port_connectivity" => {
            let o = api.ok("GET", "/api/overview", None)?;
            if cmd == "status" {
                println!("{}", serde_json::to_string_pretty(&o).unwrap_or_default());
            } else {
                println!("Ping succeeded");
            }
        }
        other => return Err(format!("{other}: not supported by Warren's rabbitmqctl")),
    }
    Ok(())
}

/// rabbitmq-plugins: every plugin Warren has is built in and always on.
fn plugins(args: &[String]) -> Result<(), String> {
    let words: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    match words.first().map(|s| s.as_str()) {
        Some("enable") | Some("disable") | Some("set") => {
            println!("Plugin configuration unchanged (Warren's plugins are built in).");
            Ok(())
        }
        Some("is_enabled") => {
            for p in &words[1..] {
                println!("{p} is enabled");
            }
            Ok(())
        }
        Some("list") => Ok(()),
        Some("directories") => Ok(()),
        _ => Err("usage: rabbitmq-plugins enable|disable|is_enabled|list [plugin ...]".into()),
    }
}
