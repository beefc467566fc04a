//! Clustering, step one and two of docs/clustering.md: the inter-node transport
//! ([`transport`]), and the metadata Raft group (group 0) on openraft: its log on disk
//! ([`log`]), its state machine ([`machine`]) handing committed commands to an [`Apply`] (the
//! broker's definitions), and [`Cluster`], which forms the group from the static seed list,
//! forwards proposals to the leader and reports the members. [`faults`] is the fault-injection
//! proxy the cluster tests put between nodes.
//!
//! Quorum-queue groups and publish/consume forwarding are later steps (docs/clustering.md).

pub mod faults;
pub mod fifo;
pub mod log;
pub mod machine;
pub mod transport;

use dashmap::DashMap;
use futures::future::BoxFuture;
use openraft::{Config, Raft, ServerState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use transport::{Auth, Groups, Network, Op, Peer};
pub use transport::{Change, ProposeError, Resolve, Tls};

/// A node's Raft id: derived from its name (the first 8 bytes of SHA-256), so every node
/// computes every other's from the seed list alone.
pub type NodeId = u64;

/// A cluster member as the membership records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (`warren-1`).
    pub name: String,
    /// Its inter-node address (`host:port`).
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A metadata change, as a log command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A fragment of RabbitMQ's definitions JSON (vhosts, users, permissions, exchanges,
    /// queues, bindings, policies, parameters): imported on every node.
    Definitions(serde_json::Value),
    /// A management API request that changes definitions, made by `user`: every node serves
    /// it with its own routes.
    Http {
        method: String,
        path: String,
        content_type: String,
        body: String,
        user: String,
    },
    /// Commands of a quorum queue's group, applied in order.
    Queue(Vec<fifo::QueueCommand>),
    /// A topology change made over AMQP on one node (a durable exchange, a durable quorum
    /// queue, a binding between them declared or deleted): made on every node. `change` is
    /// the broker's own description of it.
    Topology {
        vhost: String,
        change: serde_json::Value,
    },
}

/// The outcome of applying a command on a node (the leader's is the one a client sees).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Why the command could not be applied at all, if so.
    pub error: Option<String>,
    /// What applying it answered (for `Http`: status, body, content type).
    #[serde(default)]
    pub data: serde_json::Value,
}

openraft::declare_raft_types!(
    /// The metadata group's types.
    pub Meta:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// What committed commands are applied to.
pub trait Apply: Send + Sync + 'static {
    /// Apply the command committed at log index `index`.
    fn apply(&self, index: u64, cmd: Command) -> BoxFuture<'static, Reply>;
    /// Everything applied so far, as a snapshot.
    fn snapshot(&self) -> BoxFuture<'static, Vec<u8>>;
    /// Replace what was applied with a snapshot's content.
    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, ()>;
}

tokio::task_local! {
    static APPLYING: ();
}

/// Run `f` as the application of a committed command: what it changes was replicated
/// already, and is not proposed again ([`applying`]).
pub async fn as_applied<F: std::future::Future>(f: F) -> F::Output {
    APPLYING.scope((), f).await
}

/// Whether this task is applying a committed command.
pub fn applying() -> bool {
    APPLYING.try_with(|_| ()).is_ok()
}

/// The id of the node named `name`.
pub fn node_id(name: &str) -> NodeId {
    let h = Sha256::digest(name.as_bytes());
    u64::from_be_bytes(h[..8].try_into().unwrap())
}

/// Parse a seed `name@host:port`.
pub fn parse_seed(seed: &str) -> Result<Member, String> {
    match seed.split_once('@') {
        Some((name, addr)) if !name.is_empty() && addr.contains(':') => Ok(Member {
            name: name.to_string(),
            addr: addr.to_string(),
        }),
        _ => Err(format!(
            "cluster.seeds: '{seed}' is not of the form name@host:port"
        )),
    }
}

/// Raft timing. The defaults suit loopback and LAN: a leader lost is replaced within about
/// two seconds.
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat_ms: 200,
            election_min_ms: 1000,
            election_max_ms: 2000,
        }
    }
}

/// What a node needs to start.
pub struct Options {
    pub cluster: String,
    pub secret: String,
    /// This node's name; it must be one of the seeds.
    pub name: String,
    pub seeds: Vec<Member>,
    /// Where the Raft log lives.
    pub dir: PathBuf,
    /// The inter-node listener, already bound.
    pub listener: TcpListener,
    pub applier: Arc<dyn Apply>,
    /// How peers are dialled (default: their advertised address).
    pub resolve: Option<Resolve>,
    pub timing: Timing,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// TLS between nodes (mutual).
    pub tls: Option<Tls>,
}

/// A member as `/api/nodes` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub addr: String,
    pub id: NodeId,
    /// This node, or a node that answered within the last few seconds.
    pub running: bool,
    pub leader: bool,
    /// A voter (false: a learner still catching up).
    pub voter: bool,
}

/// The metadata group as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// A Raft group's id: [`META`] for the metadata group, [`queue_group`] for a quorum queue's.
pub type GroupId = u64;

/// The metadata group.
pub const META: GroupId = 0;

/// The group of the quorum queue `name` in `vhost` (never [`META`]).
pub fn queue_group(vhost: &str, name: &str) -> GroupId {
    let mut h = Sha256::new();
    h.update(b"queue\0");
    h.update(vhost.as_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap()).max(1)
}

/// One Raft group this node is a member of: proposals through its leader.
pub struct Group {
    pub id: GroupId,
    node: NodeId,
    raft: Raft<Meta>,
    network: Network,
    peers: tokio::sync::Mutex<HashMap<NodeId, Peer>>,
}

impl Group {
    /// The Raft handle (tests read metrics through it).
    pub fn raft(&self) -> &Raft<Meta> {
        &self.raft
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this node leads the group.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Whether this node leads the group and a majority acknowledged it within `within`
    /// (a leader cut off from the others keeps believing it leads for a while).
    pub fn leads_a_quorum(&self, within: Duration) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_some_and(|ms| ms <= within.as_millis() as u64)
    }

    /// The group's members (id, name) and the one leading, as this node knows them.
    pub fn members(&self) -> (Vec<(NodeId, String)>, Option<String>) {
        let m = self.raft.metrics().borrow().clone();
        let members = m.membership_config.membership();
        let all: Vec<(NodeId, String)> = members
            .nodes()
            .map(|(id, n)| (*id, n.name.clone()))
            .collect();
        let leader = m
            .current_leader
            .and_then(|l| members.get_node(&l))
            .map(|n| n.name.clone());
        (all, leader)
    }

    /// Commit a command through the leader (this node or another) and return the leader's
    /// reply; retried across elections until `timeout`. A command retried after a lost
    /// response may be applied twice.
    pub async fn propose(&self, cmd: Command, timeout: Duration) -> Result<Reply, ProposeError> {
        self.through_leader(Op::Propose(cmd), timeout).await
    }

    async fn through_leader(&self, op: Op, timeout: Duration) -> Result<Reply, ProposeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut metrics = self.raft.metrics();
        let mut last = ProposeError::Unavailable("no leader".into());
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(last);
            }
            let leader = metrics.borrow_and_update().current_leader;
            let r = match leader {
                Some(l) if l == self.node => {
                    let local = async {
                        match op.clone() {
                            Op::Propose(c) => transport::propose_local(&self.raft, c).await,
                            Op::Change(c) => transport::change_local(&self.raft, c).await,
                        }
                    };
                    tokio::time::timeout(left, local)
                        .await
                        .unwrap_or_else(|_| Err(ProposeError::Unavailable("timed out".into())))
                }
                Some(l) => self.forward(l, op.clone(), left).await,
                None => Err(ProposeError::Unavailable("no leader".into())),
            };
            match r {
                Ok(reply) => return Ok(reply),
                Err(e) => last = e,
            }
            // Wait for news of a leader, or a short while (a leader's node may be restarting).
            let _ =
                tokio::time::timeout(Duration::from_millis(100).min(left), metrics.changed()).await;
        }
    }

    async fn forward(&self, leader: NodeId, op: Op, ttl: Duration) -> Result<Reply, ProposeError> {
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned();
        let Some(member) = member else {
            return Err(ProposeError::Unavailable("leader not a member".into()));
        };
        let mut peers = self.peers.lock().await;
        let peer = peers.entry(leader).or_insert_with(|| {
            Peer::new(
                self.id,
                leader,
                (self.network.resolve)(leader, &member),
                self.network.auth.clone(),
            )
        });
        peer.forward(op, ttl).await
    }

    /// Stop this node's member of the group.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// One running member of the metadata group, and the node's other groups.
pub struct Cluster {
    pub id: NodeId,
    pub name: String,
    pub cluster: String,
    meta: Group,
    groups: Groups,
    network: Network,
    seen: Arc<DashMap<NodeId, Instant>>,
    listen: std::net::SocketAddr,
    stop: CancellationToken,
    timing: Timing,
    dir: PathBuf,
}

/// How long a member that has not answered still counts as running.
const SEEN_FOR: Duration = Duration::from_secs(3);

/// openraft's configuration for a group.
fn config(cluster: &str, timing: &Timing, snapshot_every: u64) -> io::Result<Config> {
    Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 0,
        // A snapshot goes in chunks of 256 KiB, each with 2 s to arrive: openraft's 3 MiB in
        // 200 ms is more than a loaded machine moves, and a follower that needs a
        // snapshot would never get one.
        snapshot_max_chunk_size: 256 << 10,
        install_snapshot_timeout: 2000,
        // Entries per append: metadata changes are small, but one may be a 20 MiB
        // definitions import (transport::MAX_FRAME).
        max_payload_entries: 32,
        ..Default::default()
    }
    .validate()
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

impl Cluster {
    /// Start this node's member of the metadata group. The seed with the smallest name forms
    /// the group (all seeds as voters) when its log is empty; the others wait to hear from
    /// the leader.
    pub async fn start(o: Options) -> io::Result<Arc<Cluster>> {
        let me = o
            .seeds
            .iter()
            .find(|m| m.name == o.name)
            .cloned()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cluster.node '{}' is not among cluster.seeds", o.name),
                )
            })?;
        let id = node_id(&me.name);
        let config = config(&o.cluster, &o.timing, o.snapshot_every)?;
        let auth = Auth {
            cluster: o.cluster.clone(),
            secret: o.secret.clone(),
            node: id,
            tls: o.tls,
        };
        let seen: Arc<DashMap<NodeId, Instant>> = Arc::new(DashMap::new());
        let resolve = o
            .resolve
            .unwrap_or_else(|| Arc::new(|_, m: &Member| m.addr.clone()));
        let network = Network {
            group: META,
            auth: auth.clone(),
            resolve,
        };
        let log = log::LogStore::open(&o.dir)?;
        let machine = machine::Machine::open(&o.dir, o.applier).await?;
        let raft = Raft::new(id, Arc::new(config), network.clone(), log, machine)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let listen = o.listener.local_addr()?;
        let stop = CancellationToken::new();
        let groups: Groups = Arc::new(DashMap::new());
        groups.insert(META, raft.clone());
        tokio::spawn(transport::serve(
            o.listener,
            groups.clone(),
            auth,
            seen.clone(),
            stop.clone(),
        ));
        let first = o.seeds.iter().map(|m| &m.name).min() == Some(&me.name);
        if first
            && !raft
                .is_initialized()
                .await
                .map_err(|e| io::Error::other(e.to_string()))?
        {
            let members: BTreeMap<NodeId, Member> = o
                .seeds
                .iter()
                .map(|m| (node_id(&m.name), m.clone()))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::warn!(error = %e, "cluster: forming the metadata group failed");
            } else {
                tracing::info!(cluster = %o.cluster, "cluster: metadata group formed");
            }
        }
        let cluster = Arc::new(Cluster {
            id,
            name: me.name.clone(),
            cluster: o.cluster,
            meta: Group {
                id: META,
                node: id,
                raft,
                network: network.clone(),
                peers: tokio::sync::Mutex::new(HashMap::new()),
            },
            groups,
            network,
            seen,
            listen,
            stop,
            timing: o.timing,
            dir: o.dir,
        });
        tokio::spawn(ping_loop(Arc::downgrade(&cluster)));
        tracing::info!(node = %me, id, "cluster: member started");
        Ok(cluster)
    }

    /// Start (or restart, from what `dir` holds) this node's member of group `id`, whose
    /// members are `members`. A pristine member forms the group with them (every member does
    /// the same with the same members, which openraft allows); `prefer` asks for an election
    /// at once, so that the groups' leaders spread over the nodes.
    pub async fn open_group(
        &self,
        id: GroupId,
        dir: &std::path::Path,
        applier: Arc<dyn Apply>,
        members: BTreeMap<NodeId, Member>,
        snapshot_every: u64,
        prefer: bool,
    ) -> io::Result<Arc<Group>> {
        std::fs::create_dir_all(dir)?;
        let config = config(&self.cluster, &self.timing, snapshot_every)?;
        let network = Network {
            group: id,
            ..self.network.clone()
        };
        let log = log::LogStore::open(dir)?;
        let machine = machine::Machine::open(dir, applier).await?;
        let raft = Raft::new(self.id, Arc::new(config), network.clone(), log, machine)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        if !raft
            .is_initialized()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
        {
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(group = id, error = %e, "cluster: forming a group");
            }
            if prefer {
                let _ = raft.trigger().elect().await;
            }
        }
        self.groups.insert(id, raft.clone());
        Ok(Arc::new(Group {
            id,
            node: self.id,
            raft,
            network,
            peers: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Stop serving group `id` on this node (its member is shut down by its owner).
    pub fn forget_group(&self, id: GroupId) {
        if id != META {
            self.groups.remove(&id);
        }
    }

    /// The metadata group's voters (a new quorum queue's members).
    pub fn voters(&self) -> BTreeMap<NodeId, Member> {
        let m = self.meta.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// Whether node `id` is this one or answered within the last few seconds.
    pub fn is_running(&self, id: NodeId) -> bool {
        id == self.id || self.seen.get(&id).is_some_and(|t| t.elapsed() < SEEN_FOR)
    }

    /// Where this node keeps its groups' files.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The inter-node listener's address.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listen
    }

    /// The metadata group.
    pub fn meta(&self) -> &Group {
        &self.meta
    }

    /// The metadata group's Raft handle (tests read metrics through it).
    pub fn raft(&self) -> &Raft<Meta> {
        &self.meta.raft
    }

    /// The metadata group's leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.meta.leader()
    }

    /// Whether this node leads the metadata group.
    pub fn is_leader(&self) -> bool {
        self.meta.is_leader()
    }

    /// Commit a metadata command (see [`Group::propose`]).
    pub async fn propose(&self, cmd: Command, timeout: Duration) -> Result<Reply, ProposeError> {
        self.meta.propose(cmd, timeout).await
    }

    /// Add or remove a member (made by the leader; a joining node catches up as a learner
    /// before it votes). `Reply.error` says why the leader refused the change.
    pub async fn change(&self, change: Change, timeout: Duration) -> Result<Reply, ProposeError> {
        self.meta.through_leader(Op::Change(change), timeout).await
    }

    /// Every member, with whether it answers.
    pub fn members(&self) -> Vec<MemberStatus> {
        let m = self.meta.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let mut out: Vec<MemberStatus> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| MemberStatus {
                name: n.name.clone(),
                addr: n.addr.clone(),
                id: *id,
                running: self.is_running(*id),
                leader: m.current_leader == Some(*id),
                voter: voters.contains(id),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Leader, term, last applied entry and members.
    pub fn status(&self) -> Status {
        let members = self.members();
        let m = self.meta.raft.metrics().borrow().clone();
        Status {
            node: self.name.clone(),
            leader: members.iter().find(|x| x.leader).map(|x| x.name.clone()),
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Stop this member: its groups' Raft, the listener and its connections.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let groups: Vec<Raft<Meta>> = self
            .groups
            .iter()
            .filter(|g| *g.key() != META)
            .map(|g| g.value().clone())
            .collect();
        for g in groups {
            let _ = g.shutdown().await;
        }
        let _ = self.meta.raft.shutdown().await;
    }

    /// Whether [`Cluster::shutdown`] ran.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }
}

/// Every second, ask each other member whether it is there (for `running` in `/api/nodes`;
/// followers otherwise hear only from the leader).
async fn ping_loop(cluster: std::sync::Weak<Cluster>) {
    let mut peers: HashMap<NodeId, Peer> = HashMap::new();
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if c.stop.is_cancelled() {
            return;
        }
        let members: Vec<(NodeId, Member)> = c
            .meta
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        for (id, m) in members {
            if id == c.id {
                continue;
            }
            let peer = peers.entry(id).or_insert_with(|| {
                Peer::new(
                    META,
                    id,
                    (c.network.resolve)(id, &m),
                    c.network.auth.clone(),
                )
            });
            if peer.ping(Duration::from_millis(500)).await {
                c.seen.insert(id, Instant::now());
            }
        }
        let stop = c.stop.clone();
        drop(c);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
