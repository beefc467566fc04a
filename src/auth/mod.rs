//! Users, vhosts, permissions, topic permissions and limits: RabbitMQ's internal
//! authentication and authorisation backend. Runtime state, changed through the management API
//! and definitions, kept durably in `data_dir/auth.json` (written whole, synced, renamed into
//! place: a change is on disk before it is acknowledged). On the first start with no such file
//! it is seeded from the configuration (RabbitMQ's rule for `default_user`: only on first
//! start); in memory mode it is seeded on every start.
//!
//! Readers take a snapshot ([`Auth::snapshot`], an `Arc`); connections keep a compiled view
//! of their own user and vhost ([`Access`]) and reload it when the generation changes, so a
//! change applies to the next check without any lock on the publish path.
//!
//! Knows nothing of AMQP frames or HTTP: the channel and the management API turn refusals into
//! their own errors.

pub(crate) mod admission;
pub(crate) mod password;
pub(crate) mod perms;
pub(crate) mod policy;

use crate::config::{Config, StorageMode};
use parking_lot::{Mutex, RwLock};
use password::{Hashing, PasswordHash};
use perms::{CompiledTopic, Perm, Permission, TopicPermission};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The file under `data_dir` holding users, vhosts and permissions.
pub(crate) const AUTH_FILE: &str = "auth.json";

/// Tags that let a user into the management API.
const MANAGEMENT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

/// Limit keys RabbitMQ accepts per vhost.
pub(crate) const VHOST_LIMITS: &[&str] = &["max-connections", "max-queues"];
/// Limit keys RabbitMQ accepts per user.
pub(crate) const USER_LIMITS: &[&str] = &["max-connections", "max-channels"];

/// A user of the internal backend.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Salted password hash (empty: no password login).
    pub hash: PasswordHash,
    /// Tags (`administrator`, `monitoring`, `policymaker`, `management`, `impersonator`, or any).
    pub tags: Vec<String>,
    /// `max-connections`, `max-channels` (absent or negative: no limit).
    pub limits: BTreeMap<String, i64>,
}

impl User {
    /// Whether the user carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// May use the management API at all.
    pub fn is_management(&self) -> bool {
        MANAGEMENT_TAGS.iter().any(|t| self.has_tag(t))
    }

    /// Sees every vhost, connection and channel in the management API (monitoring and
    /// administrator), not only the vhosts it has permissions in.
    pub fn is_monitor(&self) -> bool {
        self.has_tag("monitoring") || self.has_tag("administrator")
    }

    /// May change users, vhosts, permissions and limits.
    pub fn is_admin(&self) -> bool {
        self.has_tag("administrator")
    }

    /// A limit that is in force (set and not negative).
    pub fn limit(&self, key: &str) -> Option<u64> {
        self.limits.get(key).and_then(|v| u64::try_from(*v).ok())
    }
}

/// A vhost's record (its contents live in [`crate::vhost::VHost`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VhostRecord {
    /// Name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free tags.
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
    /// RabbitMQ's `default_queue_type` metadata (kept and shown; Warren's queues are classic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
    /// `max-connections`, `max-queues` (absent or negative: no limit).
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

impl VhostRecord {
    /// A limit that is in force (set and not negative).
    pub fn limit(&self, key: &str) -> Option<u64> {
        self.limits.get(key).and_then(|v| u64::try_from(*v).ok())
    }
}

/// Tags as RabbitMQ accepts them: a comma-separated string or a list.
pub(crate) fn tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        Text(String),
        List(Vec<String>),
    }
    Ok(match Option::<Tags>::deserialize(d)? {
        None => Vec::new(),
        Some(Tags::Text(s)) => split_tags(&s),
        Some(Tags::List(l)) => l.into_iter().filter(|t| !t.is_empty()).collect(),
    })
}

/// `"a, b"` → `["a", "b"]`.
pub(crate) fn split_tags(s: &str) -> Vec<String> {
    s.split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Check a limits object as RabbitMQ validates it (the texts are its management API's).
pub(crate) fn validate_limits(
    allowed: &[&str],
    value: &serde_json::Value,
) -> Result<BTreeMap<String, i64>, String> {
    let Some(obj) = value.as_object() else {
        return Err("Validation failed\n\nlimits should be a JSON object\n".into());
    };
    let mut out = BTreeMap::new();
    let mut unknown = Vec::new();
    for (k, v) in obj {
        if !allowed.contains(&k.as_str()) {
            unknown.push(format!("{{<<\"{k}\">>,{v}}}"));
            continue;
        }
        let n = v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| {
                let shown = match v {
                    serde_json::Value::String(s) => format!("<<\"{s}\">>"),
                    other => other.to_string(),
                };
                format!("Validation failed\n\n{k} should be a number, actually was {shown}\n")
            })?;
        out.insert(k.clone(), n);
    }
    if !unknown.is_empty() {
        return Err(format!(
            "Validation failed\n\nUnrecognised terms [{}] in limits\n",
            unknown.join(",")
        ));
    }
    Ok(out)
}

/// Users, vhosts and permissions at one moment.
#[derive(Clone, Debug, Default)]
pub struct AuthData {
    /// Users by name.
    pub users: BTreeMap<String, Arc<User>>,
    /// Vhost records by name.
    pub vhosts: BTreeMap<String, VhostRecord>,
    /// Permissions by (vhost, user).
    pub permissions: BTreeMap<(String, String), Permission>,
    /// Topic permissions by (vhost, user), one per exchange.
    pub topic_permissions: BTreeMap<(String, String), Vec<TopicPermission>>,
    /// Policies by (vhost, name).
    pub policies: BTreeMap<(String, String), policy::PolicyDef>,
    /// Operator policies by (vhost, name).
    pub operator_policies: BTreeMap<(String, String), policy::PolicyDef>,
    /// Runtime parameters by (vhost, component, name).
    pub parameters: BTreeMap<(String, String, String), policy::ParameterDef>,
    /// Global runtime parameters by name.
    pub global_parameters: BTreeMap<String, policy::GlobalParameterDef>,
}

impl AuthData {
    /// `user`'s permissions in `vhost`.
    pub fn permission(&self, vhost: &str, user: &str) -> Option<&Permission> {
        self.permissions.get(&(vhost.to_string(), user.to_string()))
    }

    /// Delete a user with its permissions and topic permissions.
    pub fn delete_user(&mut self, name: &str) -> bool {
        self.permissions.retain(|(_, u), _| u != name);
        self.topic_permissions.retain(|(_, u), _| u != name);
        self.users.remove(name).is_some()
    }

    /// Delete a vhost record with every permission in it.
    pub fn delete_vhost(&mut self, name: &str) -> bool {
        self.policies.retain(|(v, _), _| v != name);
        self.operator_policies.retain(|(v, _), _| v != name);
        self.parameters.retain(|(v, _, _), _| v != name);
        self.permissions.retain(|(v, _), _| v != name);
        self.topic_permissions.retain(|(v, _), _| v != name);
        self.vhosts.remove(name).is_some()
    }
}

/// A user as RabbitMQ's definitions (and `GET /api/users`) show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserDef {
    /// Login name.
    pub name: String,
    /// Base64 salt ++ digest (empty: no password).
    #[serde(default)]
    pub password_hash: String,
    /// The digest.
    #[serde(default)]
    pub hashing_algorithm: Hashing,
    /// Tags (a list, or a comma-separated string on input).
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
    /// User limits.
    #[serde(default)]
    pub limits: BTreeMap<String, i64>,
}

/// A permission as RabbitMQ's definitions show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PermissionDef {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Configure pattern.
    pub configure: String,
    /// Write pattern.
    pub write: String,
    /// Read pattern.
    pub read: String,
}

/// A topic permission as RabbitMQ's definitions show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopicPermissionDef {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Write pattern on routing keys.
    pub write: String,
    /// Read pattern on routing keys.
    pub read: String,
}

/// The durable form (also the shape of RabbitMQ's definitions sections).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    users: Vec<UserDef>,
    vhosts: Vec<VhostRecord>,
    permissions: Vec<PermissionDef>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermissionDef>,
    #[serde(default)]
    policies: Vec<policy::PolicyDef>,
    #[serde(default)]
    operator_policies: Vec<policy::PolicyDef>,
    #[serde(default)]
    parameters: Vec<policy::ParameterDef>,
    #[serde(default)]
    global_parameters: Vec<policy::GlobalParameterDef>,
}

impl UserDef {
    /// The stored user (the hash decoded).
    pub(crate) fn to_user(&self) -> Result<User, String> {
        Ok(User {
            name: self.name.clone(),
            hash: PasswordHash::from_base64(self.hashing_algorithm, &self.password_hash)
                .map_err(|e| format!("user '{}': {e}", self.name))?,
            tags: self.tags.clone(),
            limits: self.limits.clone(),
        })
    }

    /// The definition of a stored user.
    pub(crate) fn of(u: &User) -> UserDef {
        UserDef {
            name: u.name.clone(),
            password_hash: u.hash.to_base64(),
            hashing_algorithm: u.hash.algorithm,
            tags: u.tags.clone(),
            limits: u.limits.clone(),
        }
    }
}

impl PermissionDef {
    /// Compile the patterns.
    pub(crate) fn to_permission(&self) -> Result<Permission, String> {
        Ok(Permission {
            configure: perms::Pattern::new(&self.configure)?,
            write: perms::Pattern::new(&self.write)?,
            read: perms::Pattern::new(&self.read)?,
        })
    }
}

impl AuthData {
    fn to_file(&self) -> AuthFile {
        AuthFile {
            users: self.users.values().map(|u| UserDef::of(u)).collect(),
            vhosts: self.vhosts.values().cloned().collect(),
            permissions: self
                .permissions
                .iter()
                .map(|((v, u), p)| PermissionDef {
                    user: u.clone(),
                    vhost: v.clone(),
                    configure: p.configure.as_str().into(),
                    write: p.write.as_str().into(),
                    read: p.read.as_str().into(),
                })
                .collect(),
            topic_permissions: self
                .topic_permissions
                .iter()
                .flat_map(|((v, u), list)| {
                    list.iter().map(move |t| TopicPermissionDef {
                        user: u.clone(),
                        vhost: v.clone(),
                        exchange: t.exchange.clone(),
                        write: t.write.clone(),
                        read: t.read.clone(),
                    })
                })
                .collect(),
            policies: self.policies.values().cloned().collect(),
            operator_policies: self.operator_policies.values().cloned().collect(),
            parameters: self.parameters.values().cloned().collect(),
            global_parameters: self.global_parameters.values().cloned().collect(),
        }
    }

    fn from_file(f: AuthFile) -> Result<AuthData, String> {
        let mut d = AuthData::default();
        for u in f.users {
            d.users.insert(u.name.clone(), Arc::new(u.to_user()?));
        }
        for v in f.vhosts {
            d.vhosts.insert(v.name.clone(), v);
        }
        for p in f.permissions {
            d.permissions
                .insert((p.vhost.clone(), p.user.clone()), p.to_permission()?);
        }
        for t in f.topic_permissions {
            d.set_topic_permission(&t);
        }
        for p in f.policies {
            d.policies.insert((p.vhost.clone(), p.name.clone()), p);
        }
        for p in f.operator_policies {
            d.operator_policies
                .insert((p.vhost.clone(), p.name.clone()), p);
        }
        for p in f.parameters {
            d.parameters
                .insert((p.vhost.clone(), p.component.clone(), p.name.clone()), p);
        }
        for p in f.global_parameters {
            d.global_parameters.insert(p.name.clone(), p);
        }
        Ok(d)
    }

    /// Set (replace) the topic permission of `t.user` in `t.vhost` for `t.exchange`.
    pub fn set_topic_permission(&mut self, t: &TopicPermissionDef) {
        let list = self
            .topic_permissions
            .entry((t.vhost.clone(), t.user.clone()))
            .or_default();
        list.retain(|x| x.exchange != t.exchange);
        list.push(TopicPermission {
            exchange: t.exchange.clone(),
            write: t.write.clone(),
            read: t.read.clone(),
        });
    }

    /// Seed from the configuration: its vhosts, its users (hashed), full permissions in the
    /// vhosts each user lists (`"*"`: all).
    pub(crate) fn seed(config: &Config) -> Result<AuthData, String> {
        let mut d = AuthData::default();
        for v in &config.vhosts {
            d.vhosts.insert(
                v.clone(),
                VhostRecord {
                    name: v.clone(),
                    description: if *v == config.default_vhost {
                        "Default virtual host".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                },
            );
        }
        for u in &config.users {
            let hash = match (&u.password, &u.password_hash) {
                (_, Some(h)) => PasswordHash::from_base64(
                    Hashing::parse(&u.hashing_algorithm).ok_or_else(|| {
                        format!(
                            "users.hashing_algorithm: '{}' is not known",
                            u.hashing_algorithm
                        )
                    })?,
                    h,
                )
                .map_err(|e| format!("users.password_hash of '{}': {e}", u.name))?,
                (Some(p), None) => PasswordHash::new(p),
                (None, None) => PasswordHash::none(),
            };
            d.users.insert(
                u.name.clone(),
                Arc::new(User {
                    name: u.name.clone(),
                    hash,
                    tags: u.tags.clone(),
                    limits: BTreeMap::new(),
                }),
            );
            for v in &config.vhosts {
                if u.vhosts.iter().any(|x| x == "*" || x == v) {
                    d.permissions
                        .insert((v.clone(), u.name.clone()), Permission::all());
                }
            }
        }
        Ok(d)
    }
}

/// The backend: the current data, its generation and where it is kept.
pub struct Auth {
    data: RwLock<Arc<AuthData>>,
    /// Serialises changes (each one is written to disk before it is visible).
    writer: Mutex<()>,
    /// Read by every permission check of every connection: on a cache line of its own, so
    /// counters other connections write often cannot make those reads miss.
    generation: CacheLine,
    path: Option<PathBuf>,
}

/// An atomic alone on its cache line.
#[repr(align(128))]
struct CacheLine(AtomicU64);

/// Why a login was refused (for the log; clients get RabbitMQ's one text).
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// No such user.
    NoUser,
    /// Wrong password (or none set).
    BadPassword,
}

impl Auth {
    /// Load `data_dir/auth.json`, or seed it from the configuration on a first start (and in
    /// memory mode).
    pub fn open(config: &Config) -> io::Result<Auth> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let (data, path) = match config.storage.mode {
            StorageMode::Memory => (AuthData::seed(config).map_err(bad)?, None),
            StorageMode::Disk => {
                std::fs::create_dir_all(&config.data_dir)?;
                let path = config.data_dir.join(AUTH_FILE);
                let data = match std::fs::read(&path) {
                    Ok(bytes) => {
                        let f: AuthFile = serde_json::from_slice(&bytes)
                            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                        AuthData::from_file(f).map_err(bad)?
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let d = AuthData::seed(config).map_err(bad)?;
                        save(&path, &d)?;
                        tracing::info!(
                            users = d.users.len(),
                            vhosts = d.vhosts.len(),
                            "first start: users and vhosts seeded from the configuration"
                        );
                        d
                    }
                    Err(e) => return Err(e),
                };
                (data, Some(path))
            }
        };
        Ok(Auth {
            data: RwLock::new(Arc::new(data)),
            writer: Mutex::new(()),
            generation: CacheLine(AtomicU64::new(1)),
            path,
        })
    }

    /// The data as it is now.
    pub fn snapshot(&self) -> Arc<AuthData> {
        self.data.read().clone()
    }

    /// Bumped by every change.
    pub fn generation(&self) -> u64 {
        self.generation.0.load(Ordering::Acquire)
    }

    /// Apply a change: on a copy, written to disk (synced) before it replaces the current
    /// data. Blocking (file I/O): call from a blocking context.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut AuthData) -> Result<T, String>,
    ) -> Result<T, String> {
        let _w = self.writer.lock();
        let mut copy = (**self.data.read()).clone();
        let out = change(&mut copy)?;
        if let Some(path) = &self.path {
            save(path, &copy).map_err(|e| format!("cannot save users and permissions: {e}"))?;
        }
        *self.data.write() = Arc::new(copy);
        self.generation.0.fetch_add(1, Ordering::AcqRel);
        Ok(out)
    }

    /// Check a user name and password (the hash comparison runs in constant time; an unknown
    /// user costs a hash too, so timing does not tell which users exist).
    pub fn login(&self, name: &str, password: &str) -> Result<Arc<User>, LoginError> {
        let data = self.snapshot();
        match data.users.get(name) {
            Some(u) if u.hash.verify(password.as_bytes()) => Ok(u.clone()),
            Some(_) => Err(LoginError::BadPassword),
            None => {
                let _ = DUMMY.verify(password.as_bytes());
                Err(LoginError::NoUser)
            }
        }
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.data.read().users.get(name).cloned()
    }
}

static DUMMY: std::sync::LazyLock<PasswordHash> =
    std::sync::LazyLock::new(|| PasswordHash::new("warren-dummy"));

/// Write `data` to `path` atomically and durably: a temporary file, synced, renamed over,
/// the directory synced.
fn save(path: &Path, data: &AuthData) -> io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec_pretty(&data.to_file()).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A connection's view of its user's rights in its vhost, compiled, reloaded when the backend
/// changes (one atomic load per check otherwise).
pub(crate) struct Access {
    /// The user.
    pub user: Arc<User>,
    vhost: String,
    generation: u64,
    /// Configure, write, read granted on every name (`.*`).
    all: [bool; 3],
    perm: Option<Permission>,
    topics: Vec<(String, CompiledTopic)>,
}

impl Access {
    /// The view of `user` in `vhost`.
    pub(crate) fn new(auth: &Auth, user: Arc<User>, vhost: &str) -> Access {
        let mut a = Access {
            user,
            vhost: vhost.to_string(),
            generation: 0,
            all: [false; 3],
            perm: None,
            topics: Vec::new(),
        };
        a.reload(auth);
        a
    }

    fn reload(&mut self, auth: &Auth) {
        self.generation = auth.generation();
        let data = auth.snapshot();
        if let Some(u) = data.users.get(&self.user.name) {
            self.user = u.clone();
        }
        let key = (self.vhost.clone(), self.user.name.clone());
        self.perm = data.permissions.get(&key).cloned();
        self.all = match &self.perm {
            Some(p) => [
                p.configure.matches_all(),
                p.write.matches_all(),
                p.read.matches_all(),
            ],
            None => [false; 3],
        };
        self.topics = data
            .topic_permissions
            .get(&key)
            .map(|l| {
                l.iter()
                    .map(|t| (t.exchange.clone(), t.compile(&self.user.name, &self.vhost)))
                    .collect()
            })
            .unwrap_or_default();
    }

    fn fresh(&mut self, auth: &Auth) {
        if auth.generation() != self.generation {
            self.reload(auth);
        }
    }

    /// Whether `perm` is granted on every name, with nothing changed since the view was made
    /// (false does not mean refused: ask [`Access::allows`]).
    #[inline]
    pub(crate) fn allows_all(&self, auth: &Auth, perm: Perm) -> bool {
        auth.generation() == self.generation
            && self.all[match perm {
                Perm::Configure => 0,
                Perm::Write => 1,
                Perm::Read => 2,
            }]
    }

    /// Whether `perm` is granted on the resource `name` (the default exchange is checked as
    /// `amq.default`, as RabbitMQ does).
    pub(crate) fn allows(&mut self, auth: &Auth, perm: Perm, name: &str) -> bool {
        self.fresh(auth);
        self.perm.as_ref().is_some_and(|p| p.allows(perm, name))
    }

    /// Whether a routing key may be used on a topic exchange (true when the user has no topic
    /// permission for it, as RabbitMQ).
    pub(crate) fn allows_topic(
        &mut self,
        auth: &Auth,
        perm: Perm,
        exchange: &str,
        key: &str,
    ) -> bool {
        self.fresh(auth);
        match self.topics.iter().find(|(x, _)| x == exchange) {
            None => true,
            Some((_, t)) => t.allows(perm, key),
        }
    }

    /// Whether the user has any topic permission (the publish path skips the lookup if not).
    pub(crate) fn has_topic_permissions(&mut self, auth: &Auth) -> bool {
        self.fresh(auth);
        !self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated_with_rabbitmqs_texts() {
        let v = serde_json::json!({"max-queues": "x"});
        assert_eq!(
            validate_limits(VHOST_LIMITS, &v).unwrap_err(),
            "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"
        );
        let v = serde_json::json!({"bogus": 5});
        assert_eq!(
            validate_limits(VHOST_LIMITS, &v).unwrap_err(),
            "Validation failed\n\nUnrecognised terms [{<<\"bogus\">>,5}] in limits\n"
        );
        let v = serde_json::json!({"max-connections": 3});
        assert_eq!(
            validate_limits(USER_LIMITS, &v).unwrap()["max-connections"],
            3
        );
    }

    #[test]
    fn seeded_from_config_and_saved_durably() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let a = Auth::open(&c).unwrap();
        assert!(a.login("guest", "guest").is_ok());
        assert_eq!(a.login("guest", "x"), Err(LoginError::BadPassword));
        assert_eq!(a.login("nobody", "x"), Err(LoginError::NoUser));
        a.update(|d| {
            d.delete_user("guest");
            Ok(())
        })
        .unwrap();
        // The configuration seeds only the first start: a deleted default user stays deleted.
        let a = Auth::open(&c).unwrap();
        assert!(a.user("guest").is_none());
        assert!(a.snapshot().vhosts.contains_key("/"));
    }

    #[test]
    fn access_follows_changes() {
        let c = Config::for_tests();
        let auth = Auth::open(&c).unwrap();
        let user = auth.user("guest").unwrap();
        let mut access = Access::new(&auth, user, "/");
        assert!(access.allows(&auth, Perm::Configure, "q"));
        auth.update(|d| {
            d.permissions.insert(
                ("/".into(), "guest".into()),
                PermissionDef {
                    user: "guest".into(),
                    vhost: "/".into(),
                    configure: "^a".into(),
                    write: "".into(),
                    read: ".*".into(),
                }
                .to_permission()?,
            );
            Ok(())
        })
        .unwrap();
        assert!(!access.allows(&auth, Perm::Configure, "q"));
        assert!(access.allows(&auth, Perm::Configure, "abc"));
        assert!(!access.allows(&auth, Perm::Write, "abc"));
        assert!(access.allows_topic(&auth, Perm::Write, "amq.topic", "any"));
    }
}
