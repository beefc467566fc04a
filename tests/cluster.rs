//! The metadata Raft group on three in-process nodes, talking over loopback TCP through the
//! fault-injection proxy (one link per direction of each pair): election, replication,
//! forwarding from followers, a leader's loss, a minority partition, a restart that catches up
//! from a snapshot, and a node with the wrong secret.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren::cluster::faults::Link;
use warren::cluster::{
    Apply, Cluster, Command, Member, NodeId, Options, ProposeError, Reply, Timing, node_id,
};

/// Records what was applied, in order.
#[derive(Default)]
struct Record {
    applied: Mutex<Vec<Command>>,
    installs: Mutex<u32>,
}

impl Apply for Record {
    fn apply(&self, _index: u64, cmd: Command) -> BoxFuture<'static, Reply> {
        let refused = cmd == Command::Definitions(json!("refuse me"));
        self.applied.lock().push(cmd);
        Box::pin(async move {
            Reply {
                error: refused.then(|| "refused".to_string()),
                ..Default::default()
            }
        })
    }
    fn snapshot(&self) -> BoxFuture<'static, Vec<u8>> {
        let bytes = serde_json::to_vec(&*self.applied.lock()).unwrap();
        Box::pin(async move { bytes })
    }
    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, ()> {
        *self.applied.lock() = serde_json::from_slice(&data).unwrap();
        *self.installs.lock() += 1;
        Box::pin(async {})
    }
}

struct Node {
    name: String,
    dir: PathBuf,
    addr: SocketAddr,
    secret: String,
    record: Arc<Record>,
    cluster: Option<Arc<Cluster>>,
}

struct Harness {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    seeds: Vec<Member>,
    /// links[(i, j)]: what node i dials to reach node j.
    links: HashMap<(usize, usize), Link>,
    snapshot_every: u64,
}

fn cmd(n: u32) -> Command {
    Command::Definitions(json!({ "exchanges": [{ "name": format!("x{n}") }] }))
}

async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    // The port of a stopped node frees once its listener task has ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

impl Harness {
    async fn new(secrets: [&str; 3], snapshot_every: u64) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        let mut nodes = Vec::new();
        for (i, secret) in secrets.iter().enumerate() {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            listeners.push(l);
            nodes.push(Node {
                name: format!("n{}", i + 1),
                dir: tmp.path().join(format!("n{}", i + 1)),
                addr,
                secret: secret.to_string(),
                record: Arc::new(Record::default()),
                cluster: None,
            });
        }
        let seeds: Vec<Member> = nodes
            .iter()
            .map(|n| Member {
                name: n.name.clone(),
                addr: n.addr.to_string(),
            })
            .collect();
        let mut links = HashMap::new();
        for i in 0..3 {
            for (j, to) in nodes.iter().enumerate() {
                if i != j {
                    links.insert((i, j), Link::start(to.addr).await.unwrap());
                }
            }
        }
        let mut h = Harness {
            _tmp: tmp,
            nodes,
            seeds,
            links,
            snapshot_every,
        };
        for (i, l) in listeners.into_iter().enumerate() {
            h.start_with(i, l).await;
        }
        h
    }

    async fn start(&mut self, i: usize) {
        let l = bind(self.nodes[i].addr).await;
        self.start_with(i, l).await;
    }

    async fn start_with(&mut self, i: usize, listener: tokio::net::TcpListener) {
        let by_id: HashMap<NodeId, SocketAddr> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (node_id(&self.nodes[j].name), self.links[&(i, j)].addr()))
            .collect();
        let n = &mut self.nodes[i];
        n.record = Arc::new(Record::default());
        let c = Cluster::start(Options {
            cluster: "test".into(),
            secret: n.secret.clone(),
            name: n.name.clone(),
            seeds: self.seeds.clone(),
            dir: n.dir.clone(),
            listener,
            applier: n.record.clone(),
            resolve: Some(Arc::new(move |id, m: &Member| {
                by_id
                    .get(&id)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| m.addr.clone())
            })),
            timing: Timing {
                heartbeat_ms: 100,
                election_min_ms: 600,
                election_max_ms: 1200,
            },
            snapshot_every: self.snapshot_every,
            tls: None,
        })
        .await
        .unwrap();
        n.cluster = Some(c);
    }

    async fn stop(&mut self, i: usize) {
        if let Some(c) = self.nodes[i].cluster.take() {
            c.shutdown().await;
        }
    }

    fn cluster(&self, i: usize) -> &Arc<Cluster> {
        self.nodes[i].cluster.as_ref().unwrap()
    }

    /// The index of the node all running nodes agree leads, within `within`.
    async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..3)
                .filter(|&i| self.nodes[i].cluster.is_some())
                .collect();
            let leaders: Vec<usize> = running
                .iter()
                .copied()
                .filter(|&i| self.cluster(i).is_leader())
                .collect();
            if let [l] = leaders[..] {
                let id = self.cluster(l).id;
                if running
                    .iter()
                    .all(|&i| self.cluster(i).leader() == Some(id))
                {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Node `i` cut off from the other two, both ways.
    fn isolate(&self, i: usize) {
        for ((a, b), l) in &self.links {
            if *a == i || *b == i {
                l.cut();
            }
        }
    }

    fn heal(&self) {
        for l in self.links.values() {
            l.heal();
        }
    }

    async fn all_applied(&self, want: &[Command]) {
        for i in 0..3 {
            self.wait_applied(i, want).await;
        }
    }

    async fn stop_all(&mut self) {
        for i in 0..3 {
            self.stop(i).await;
        }
    }

    async fn wait_applied(&self, i: usize, want: &[Command]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.nodes[i].record.applied.lock().clone();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} applied {} commands, want {}: {got:?}",
                got.len(),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const LONG: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_replicates_forwards_and_survives_the_leaders_loss() {
    let mut h = Harness::new(["s", "s", "s"], 1000).await;
    let leader = h.leader(LONG).await;
    let follower = (leader + 1) % 3;
    // Proposed on a follower: forwarded to the leader, committed, applied everywhere.
    let mut want = Vec::new();
    for n in 0..5 {
        let r = h.cluster(follower).propose(cmd(n), LONG).await.unwrap();
        assert_eq!(r, Reply::default());
        want.push(cmd(n));
    }
    // The leader's answer reaches the proposer, refusals included.
    let r = h
        .cluster(follower)
        .propose(Command::Definitions(json!("refuse me")), LONG)
        .await
        .unwrap();
    assert_eq!(r.error.as_deref(), Some("refused"));
    want.push(Command::Definitions(json!("refuse me")));
    h.all_applied(&want).await;
    // Every member is listed, and each answers.
    let deadline = Instant::now() + LONG;
    while !h.cluster(follower).members().iter().all(|m| m.running) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            h.cluster(follower).members()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: Vec<_> = h
        .cluster(follower)
        .members()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"]);

    // The leader stops: another is elected within a few seconds and takes proposals.
    let lost = Instant::now();
    h.stop(leader).await;
    let next = h.leader(Duration::from_secs(10)).await;
    let took = lost.elapsed();
    assert_ne!(next, leader);
    assert!(took < Duration::from_secs(5), "new leader after {took:?}");
    for n in 5..10 {
        h.cluster(next).propose(cmd(n), LONG).await.unwrap();
        want.push(cmd(n));
    }
    let down = h
        .cluster(next)
        .members()
        .into_iter()
        .find(|m| m.name == h.nodes[leader].name)
        .unwrap();
    let deadline = Instant::now() + LONG;
    while h
        .cluster(next)
        .members()
        .iter()
        .any(|m| m.name == down.name && m.running)
    {
        assert!(
            Instant::now() < deadline,
            "stopped node still listed as running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old leader restarts from its directory: its log replays, and it catches up.
    h.start(leader).await;
    h.all_applied(&want).await;
    h.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_catches_up_after_the_partition_heals() {
    let mut h = Harness::new(["s", "s", "s"], 1000).await;
    let leader = h.leader(LONG).await;
    let mut want = vec![cmd(0)];
    h.cluster(leader).propose(cmd(0), LONG).await.unwrap();
    // The leader alone on one side: it cannot commit; the other two elect a leader and can.
    h.isolate(leader);
    let minority = h.cluster(leader).clone();
    let refused = minority
        .propose(cmd(100), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ProposeError::Unavailable(_)),
        "{refused:?}"
    );
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let deadline = Instant::now() + LONG;
    let majority_leader = loop {
        if let Some(&l) = others.iter().find(|&&i| h.cluster(i).is_leader()) {
            break l;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for n in 1..4 {
        h.cluster(others[n as usize % 2])
            .propose(cmd(n), LONG)
            .await
            .unwrap();
        want.push(cmd(n));
    }
    let _ = majority_leader;
    assert!(!h.nodes[leader].record.applied.lock().contains(&cmd(100)));
    // Healed: one leader again, every node has the majority's commands and none of the
    // minority's uncommitted one.
    h.heal();
    h.leader(LONG).await;
    h.all_applied(&want).await;
    h.stop_all().await;
}

/// Links to one follower slower than the heartbeat interval: openraft drops its RPCs half-way
/// (its timeout), again and again. Once healed, the follower catches up: no connection is used
/// again after a dropped request (its late response would answer the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_slow_link_catches_up_once_it_heals() {
    let h = Harness::new(["s", "s", "s"], 1000).await;
    let leader = h.leader(LONG).await;
    let slow = (leader + 1) % 3;
    for ((a, b), l) in &h.links {
        if *a == slow || *b == slow {
            l.delay(Duration::from_millis(70));
        }
    }
    let mut want = Vec::new();
    for n in 0..30 {
        h.cluster(leader).propose(cmd(n), LONG).await.unwrap();
        want.push(cmd(n));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    h.heal();
    for n in 30..40 {
        h.cluster(leader).propose(cmd(n), LONG).await.unwrap();
        want.push(cmd(n));
    }
    h.all_applied(&want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_purged_log_gets_a_snapshot_and_restarts_from_it() {
    let mut h = Harness::new(["s", "s", "s"], 10).await;
    let leader = h.leader(LONG).await;
    let away = (leader + 1) % 3;
    h.stop(away).await;
    let mut want = Vec::new();
    for n in 0..40 {
        h.cluster(leader).propose(cmd(n), LONG).await.unwrap();
        want.push(cmd(n));
    }
    // The leader snapshots every 10 entries and keeps no log behind its snapshot, so the
    // node that was away can only catch up from a snapshot.
    let deadline = Instant::now() + LONG;
    while h.cluster(leader).raft().metrics().borrow().purged.is_none() {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.start(away).await;
    h.wait_applied(away, &want).await;
    assert!(*h.nodes[away].record.installs.lock() >= 1);
    // Every node restarts from its own snapshot and log.
    for i in 0..3 {
        h.stop(i).await;
    }
    for i in 0..3 {
        h.start(i).await;
    }
    h.leader(LONG).await;
    h.all_applied(&want).await;
    h.stop_all().await;
}

/// Before it has proved the secret, a connection may send frames of 4 KiB at most: one that
/// announces 200 MiB is closed at once, nothing buffered; the node carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_make_a_node_buffer_a_large_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::new(["s", "s", "s"], 1000).await;
    let leader = h.leader(LONG).await;
    let mut s = tokio::net::TcpStream::connect(h.nodes[leader].addr)
        .await
        .unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut challenge = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut challenge).await.unwrap();
    assert!(String::from_utf8_lossy(&challenge).contains("nonce"));
    s.write_all(&(200u32 << 20).to_be_bytes()).await.unwrap();
    s.write_all(&[b'x'; 1024]).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    assert!(matches!(r, Ok(Ok(0))), "still open: {r:?}");
    h.cluster(leader).propose(cmd(1), LONG).await.unwrap();
    h.all_applied(&[cmd(1)]).await;
    h.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_kept_out() {
    let mut h = Harness::new(["s", "s", "wrong"], 1000).await;
    let leader = h.leader_of(&[0, 1]).await;
    let want = vec![cmd(1)];
    h.cluster(leader).propose(cmd(1), LONG).await.unwrap();
    h.wait_applied(0, &want).await;
    h.wait_applied(1, &want).await;
    // The two others refuse its connections: it never hears of the command, and they never
    // count it as running.
    let members = h.cluster(leader).members();
    assert!(!members.iter().find(|m| m.name == "n3").unwrap().running);
    assert!(h.nodes[2].record.applied.lock().is_empty());
    h.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_catches_up_votes_and_leaves() {
    let mut h = Harness::new(["s", "s", "s"], 1000).await;
    let leader = h.leader(LONG).await;
    let mut want = Vec::new();
    for n in 0..5 {
        h.cluster(leader).propose(cmd(n), LONG).await.unwrap();
        want.push(cmd(n));
    }
    // A fourth node, started with the members it will join; it waits to be added.
    let l4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n4 = Member {
        name: "n4".into(),
        addr: l4.local_addr().unwrap().to_string(),
    };
    let mut seeds = h.seeds.clone();
    seeds.push(n4.clone());
    let rec4 = Arc::new(Record::default());
    let c4 = Cluster::start(Options {
        cluster: "test".into(),
        secret: "s".into(),
        name: "n4".into(),
        seeds,
        dir: h._tmp.path().join("n4"),
        listener: l4,
        applier: rec4.clone(),
        resolve: None,
        timing: Timing::default(),
        snapshot_every: 1000,
        tls: None,
    })
    .await
    .unwrap();
    assert!(rec4.applied.lock().is_empty());
    // Added through a follower: it catches up, then votes.
    let follower = (leader + 1) % 3;
    let r = h
        .cluster(follower)
        .change(warren::cluster::Change::Join(n4.clone()), LONG)
        .await
        .unwrap();
    assert_eq!(r.error, None);
    let deadline = Instant::now() + LONG;
    while *rec4.applied.lock() != want {
        assert!(Instant::now() < deadline, "n4 did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let members = h.cluster(leader).members();
    assert_eq!(members.len(), 4);
    assert!(members.iter().all(|m| m.voter), "{members:?}");
    // Four voters: with one stopped, the three left are a majority and commit.
    let other = (leader + 2) % 3;
    h.stop(other).await;
    h.cluster(leader).propose(cmd(5), LONG).await.unwrap();
    want.push(cmd(5));
    let deadline = Instant::now() + LONG;
    while *rec4.applied.lock() != want {
        assert!(Instant::now() < deadline, "n4 did not apply a new command");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.start(other).await;
    // Removed again: three voters.
    let r = h
        .cluster(other)
        .change(warren::cluster::Change::Leave(node_id("n4")), LONG)
        .await
        .unwrap();
    assert_eq!(r.error, None);
    c4.shutdown().await;
    let deadline = Instant::now() + LONG;
    while h.cluster(leader).members().len() != 3 {
        assert!(Instant::now() < deadline, "n4 still a member");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.cluster(other).propose(cmd(6), LONG).await.unwrap();
    want.push(cmd(6));
    h.all_applied(&want).await;
    h.stop_all().await;
}

impl Harness {
    /// The leader among `of`, agreed by them.
    async fn leader_of(&self, of: &[usize]) -> usize {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(&l) = of.iter().find(|&&i| self.cluster(i).is_leader()) {
                let id = self.cluster(l).id;
                if of.iter().all(|&i| self.cluster(i).leader() == Some(id)) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {of:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// Three brokers clustered in-process: management API changes on any node are committed by
// the metadata group and made on every node.

mod common;

use warren::{Broker, Config};

struct Brokers {
    _tmp: tempfile::TempDir,
    configs: Vec<Config>,
    addrs: Vec<SocketAddr>,
    brokers: Vec<Option<Broker>>,
    /// With `with_links`: node i reaches node j through `links[(i, j)]`.
    links: HashMap<(usize, usize), Link>,
}

const ADMIN: Option<&str> = Some("guest:guest");

impl Brokers {
    async fn new() -> Brokers {
        Brokers::with(|_, _| {}).await
    }

    /// Three brokers, each configuration changed by `f` (given the data directory's parent).
    async fn with(f: impl Fn(&mut Config, &std::path::Path)) -> Brokers {
        Brokers::build(f, false).await
    }

    /// Three brokers that reach each other through fault-injection links (each node's seeds
    /// name the others at its links' addresses).
    async fn with_links() -> Brokers {
        Brokers::build(|_, _| {}, true).await
    }

    async fn build(f: impl Fn(&mut Config, &std::path::Path), linked: bool) -> Brokers {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut links = HashMap::new();
        if linked {
            for i in 0..3 {
                for (j, to) in addrs.iter().enumerate() {
                    if i != j {
                        links.insert((i, j), Link::start(*to).await.unwrap());
                    }
                }
            }
        }
        let mut configs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let seeds: Vec<String> = addrs
                .iter()
                .enumerate()
                .map(|(j, a)| match links.get(&(i, j)) {
                    Some(l) => format!("warren-{}@{}", j + 1, l.addr()),
                    None => format!("warren-{}@{a}", j + 1),
                })
                .collect();
            let mut c = Config::for_tests();
            c.storage.mode = warren::config::StorageMode::Disk;
            c.data_dir = tmp.path().join(format!("node{}", i + 1));
            c.management.enabled = true;
            c.management.bind = "127.0.0.1".into();
            c.management.port = 0;
            c.cluster_name = "test-cluster".into();
            c.cluster.enabled = true;
            c.cluster.node = format!("warren-{}", i + 1);
            c.cluster.listen = addr.to_string();
            c.cluster.seeds = seeds;
            c.cluster.secret = "secret".into();
            f(&mut c, tmp.path());
            configs.push(c);
        }
        let mut brokers = Vec::new();
        for (c, l) in configs.iter().zip(listeners) {
            brokers.push(Some(Broker::start_with(c.clone(), Some(l)).await.unwrap()));
        }
        Brokers {
            _tmp: tmp,
            configs,
            addrs,
            brokers,
            links,
        }
    }

    fn http(&self, i: usize) -> SocketAddr {
        self.brokers[i].as_ref().unwrap().management_addr().unwrap()
    }

    async fn stop(&mut self, i: usize) {
        if let Some(b) = self.brokers[i].take() {
            b.shutdown(Duration::from_secs(5)).await;
        }
    }

    async fn start(&mut self, i: usize) {
        let l = bind(self.addrs[i]).await;
        self.brokers[i] = Some(
            Broker::start_with(self.configs[i].clone(), Some(l))
                .await
                .unwrap(),
        );
    }

    /// Wait until every running node lists every member as running.
    async fn all_running(&self) {
        let deadline = Instant::now() + LONG;
        loop {
            let mut ok = true;
            for i in 0..3 {
                if self.brokers[i].is_none() {
                    continue;
                }
                let (s, v) = common::http(self.http(i), "GET", "/api/nodes", ADMIN).await;
                assert_eq!(s, 200);
                let nodes = v.as_array().unwrap();
                ok &= nodes.len() == 3 && nodes.iter().all(|n| n["running"] == true);
            }
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `GET path` on node `i` answers `status`.
    async fn wait_status(&self, i: usize, path: &str, status: u16) -> serde_json::Value {
        let deadline = Instant::now() + LONG;
        loop {
            let (s, v) = common::http(self.http(i), "GET", path, ADMIN).await;
            if s == status {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}: GET {path} answers {s}, want {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// With `cluster.tls`, nodes talk TLS (mutual, against the CA): the cluster forms and
/// replicates, and a plain TCP client on the inter-node port never gets a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_tls_when_told_to() {
    let c = Brokers::with(|c, dir| {
        let certs = dir.join("certs");
        if !certs.join("ca.pem").exists() {
            common::certs::write(&certs, "tls-user");
        }
        c.cluster.tls = true;
        c.tls.cert_file = Some(certs.join("server.pem"));
        c.tls.key_file = Some(certs.join("server.key"));
        c.tls.ca_file = Some(certs.join("ca.pem"));
    })
    .await;
    c.all_running().await;
    put_is(c.http(1), "/api/vhosts/tls-v", "{}", 201).await;
    for i in 0..3 {
        c.wait_status(i, "/api/vhosts/tls-v", 200).await;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(c.addrs[0]).await.unwrap();
    s.write_all(b"\x00\x00\x00\x02{}").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("nonce"),
        "a challenge in plain text: {r:?} {buf:?}"
    );
    let mut c = c;
    for i in 0..3 {
        c.stop(i).await;
    }
}

impl Brokers {
    /// Node `i`'s queue `name` in vhost `/`.
    fn queue(&self, i: usize, name: &str) -> Option<Arc<warren::queue::Queue>> {
        self.brokers[i]
            .as_ref()?
            .state()
            .vhost("/")?
            .queue(name)
            .ok()
    }

    /// The node leading queue `name`'s group, agreed by every running node.
    async fn queue_leader(&self, name: &str) -> usize {
        let deadline = Instant::now() + LONG;
        loop {
            let groups: Vec<Option<Arc<warren::cluster::Group>>> = (0..3)
                .map(|i| {
                    self.queue(i, name)
                        .and_then(|q| q.replica().and_then(|r| r.group().cloned()))
                })
                .collect();
            let leader = groups
                .iter()
                .position(|g| g.as_ref().is_some_and(|g| g.is_leader()));
            if let Some(l) = leader {
                let id = warren::cluster::node_id(&format!("warren-{}", l + 1));
                let agreed = (0..3).all(|i| {
                    self.brokers[i].is_none()
                        || groups[i].as_ref().is_some_and(|g| g.leader() == Some(id))
                });
                if agreed {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader for {name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn amqp(&self, i: usize) -> lapin::Connection {
        common::lapin_connect(self.brokers[i].as_ref().unwrap()).await
    }
}

/// Publish `bodies` with confirms on `ch`, again for each one nacked (the group had no
/// leader for longer than a publish waits), until every one is confirmed.
async fn publish_confirmed(ch: &lapin::Channel, queue: &str, bodies: &[String]) {
    use lapin::options::BasicPublishOptions;
    let mut left: Vec<String> = bodies.to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !left.is_empty() {
        assert!(Instant::now() < deadline, "{} never confirmed", left.len());
        let mut pending = Vec::new();
        for b in &left {
            let c = ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    b.as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            pending.push((b.clone(), c));
        }
        let mut nacked = Vec::new();
        for (b, c) in pending {
            if !c.await.unwrap().is_ack() {
                nacked.push(b);
            }
        }
        left = nacked;
    }
}

/// A quorum queue in a cluster is one queue on every node: declared over AMQP on one node,
/// published to with confirms through a second, consumed on a third. A consumer's unacked
/// messages come back redelivered when its channel closes; the group's leader is stopped
/// while messages flow and the others carry on with a new one; at the end every confirmed
/// message was delivered, and the stopped node, restarted, catches up with the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_one_queue_on_every_node_and_outlives_its_leader() {
    use futures::StreamExt;
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    let mut c = Brokers::new().await;
    c.all_running().await;

    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let declarer = c.amqp(0).await;
    let dch = declarer.create_channel().await.unwrap();
    dch.queue_declare(
        "qq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    // Replicated to the other nodes through the metadata group.
    for i in 0..3 {
        let q = c.wait_status(i, "/api/queues/%2F/qq", 200).await;
        assert_eq!(q["type"], "quorum", "{q}");
    }
    let leader = c.queue_leader("qq").await;
    // Where the group is, as RabbitMQ shows a quorum queue's members and leader.
    let want = format!("warren-{}", leader + 1);
    for i in 0..3 {
        let deadline = Instant::now() + LONG;
        loop {
            let (_, q) = common::http(c.http(i), "GET", "/api/queues/%2F/qq", ADMIN).await;
            if q["leader"] == want.as_str() && q["online"].as_array().is_some_and(|o| o.len() == 3)
            {
                assert_eq!(q["node"], want.as_str());
                assert_eq!(q["members"], json!(["warren-1", "warren-2", "warren-3"]));
                break;
            }
            assert!(Instant::now() < deadline, "node {i}: {q}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (p, k) = match leader {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };

    // Published through one node, consumed on another.
    let pconn = c.amqp(p).await;
    let pch = pconn.create_channel().await.unwrap();
    pch.confirm_select(Default::default()).await.unwrap();
    let first: Vec<String> = (0..200).map(|i| format!("a{i}")).collect();
    publish_confirmed(&pch, "qq", &first).await;
    for i in 0..3 {
        let deadline = Instant::now() + LONG;
        while c.queue(i, "qq").unwrap().message_count() != 200 {
            assert!(Instant::now() < deadline, "node {i} does not have the 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A consumer that takes some and closes its channel without acking: they come back
    // redelivered.
    let kconn = c.amqp(k).await;
    let grab = kconn.create_channel().await.unwrap();
    grab.basic_qos(5, Default::default()).await.unwrap();
    let mut g = grab
        .basic_consume(
            "qq".into(),
            "grab".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut grabbed = std::collections::HashSet::new();
    while grabbed.len() < 5 {
        let d = tokio::time::timeout(LONG, g.next())
            .await
            .expect("deliveries to the grabbing consumer")
            .unwrap()
            .unwrap();
        assert!(!d.redelivered);
        grabbed.insert(String::from_utf8(d.data.clone()).unwrap());
    }
    grab.close(200, "bye".into()).await.unwrap();

    let kch = kconn.create_channel().await.unwrap();
    kch.basic_qos(50, Default::default()).await.unwrap();
    let mut cons = kch
        .basic_consume(
            "qq".into(),
            "main".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(d)) = cons.next().await {
            let body = String::from_utf8(d.data.clone()).unwrap();
            let _ = tx.send((body, d.redelivered));
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    let mut got: HashMap<String, bool> = HashMap::new();
    let deadline = Instant::now() + LONG;
    while got.len() < 200 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (b, redelivered) = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of 200 delivered", got.len()))
            .unwrap();
        got.insert(b, redelivered);
    }
    for b in &grabbed {
        assert_eq!(got.get(b), Some(&true), "{b} came back redelivered");
    }
    assert!(first.iter().all(|b| got.contains_key(b)));

    // The group's leader stops while messages flow: the others elect one and carry on.
    let second: Vec<String> = (0..300).map(|i| format!("b{i}")).collect();
    let (before, after) = second.split_at(100);
    publish_confirmed(&pch, "qq", before).await;
    c.stop(leader).await;
    publish_confirmed(&pch, "qq", after).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !second.iter().all(|b| got.contains_key(b)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (b, r) = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| {
                let missing = second.iter().filter(|b| !got.contains_key(*b)).count();
                panic!("{missing} confirmed messages never delivered")
            })
            .unwrap();
        got.entry(b).or_insert(r);
    }
    let new_leader = c.queue_leader("qq").await;
    assert_ne!(new_leader, leader);

    // An exchange and a binding declared over AMQP on one node route on the others; deleted
    // over AMQP, they are gone everywhere.
    let tch = kconn.create_channel().await.unwrap();
    tch.exchange_declare(
        "qx".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    tch.queue_bind(
        "qq".into(),
        "qx".into(),
        "k.#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in (0..3).filter(|&i| i != leader) {
        c.wait_status(i, "/api/exchanges/%2F/qx", 200).await;
        c.wait_status(i, "/api/bindings/%2F/e/qx/q/qq/k.%23", 200)
            .await;
    }
    let routed: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
    for b in &routed {
        let c = pch
            .basic_publish(
                "qx".into(),
                "k.1".into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        assert!(c.await.unwrap().is_ack());
    }
    let deadline = Instant::now() + LONG;
    while !routed.iter().all(|b| got.contains_key(b)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (b, r) = tokio::time::timeout(left, rx.recv())
            .await
            .expect("messages routed through the replicated binding")
            .unwrap();
        got.entry(b).or_insert(r);
    }
    tch.queue_unbind(
        "qq".into(),
        "qx".into(),
        "k.#".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in (0..3).filter(|&i| i != leader) {
        c.wait_status(i, "/api/bindings/%2F/e/qx/q/qq/k.%23", 404)
            .await;
    }
    tch.exchange_delete("qx".into(), Default::default())
        .await
        .unwrap();
    for i in (0..3).filter(|&i| i != leader) {
        c.wait_status(i, "/api/exchanges/%2F/qx", 404).await;
    }

    // Back, the stopped node catches up: the queue is empty there too, with the consumer.
    c.start(leader).await;
    let deadline = Instant::now() + LONG;
    loop {
        let q = c.queue(leader, "qq").map(|q| q.stats());
        if let Some((0, 0, 1, _)) = q {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node's copy: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((declarer, pconn, kconn));
    for i in 0..3 {
        c.stop(i).await;
    }
}

/// Where each node takes AMQP connections now (None: stopped).
type Amqp = Arc<Mutex<Vec<Option<SocketAddr>>>>;

/// What the message nemesis saw.
#[derive(Default)]
struct Seen {
    confirmed: std::collections::HashSet<String>,
    nacked: u64,
    /// Deliveries of each message.
    delivered: HashMap<String, u32>,
    /// Deliveries after the first one not marked redelivered (a message enqueued twice).
    fresh_again: u32,
    /// When each message was first acked, and through which node.
    acked: HashMap<String, (usize, Instant)>,
    /// Faults: a node in trouble (stopped, or cut off from the queue's leader), and when.
    faults: Vec<(usize, Instant)>,
}

async fn amqp_to(amqp: &Amqp, i: usize) -> Option<lapin::Connection> {
    let addr = (*amqp.lock())[i]?;
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let props = lapin::ConnectionProperties::default();
    tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(&uri, props),
    )
    .await
    .ok()?
    .ok()
}

/// Publishes distinct messages through node `i` with confirms, reconnecting when the node
/// goes away, until `stop`.
async fn nemesis_producer(
    i: usize,
    amqp: Amqp,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let Some(conn) = amqp_to(&amqp, i).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch.confirm_select(Default::default()).await.is_err() {
            continue;
        }
        while !stop.is_cancelled() {
            let body = format!("p{i}-{n}");
            n += 1;
            let Ok(c) = ch
                .basic_publish(
                    "".into(),
                    "nq".into(),
                    Default::default(),
                    body.as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
            else {
                break;
            };
            match c.await {
                Ok(c) if c.is_ack() => {
                    seen.lock().confirmed.insert(body);
                }
                Ok(_) => seen.lock().nacked += 1,
                Err(_) => break,
            }
        }
    }
}

/// Consumes (prefetch 20, manual acks) through node `i`, reconnecting when it goes away.
async fn nemesis_consumer(
    i: usize,
    amqp: Amqp,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    while !stop.is_cancelled() {
        let Some(conn) = amqp_to(&amqp, i).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch.basic_qos(20, Default::default()).await.is_err() {
            continue;
        }
        let Ok(mut cons) = ch
            .basic_consume(
                "nq".into(),
                format!("c{i}").as_str().into(),
                Default::default(),
                Default::default(),
            )
            .await
        else {
            continue;
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                d = cons.next() => d,
            };
            let Some(Ok(d)) = next else { break };
            let body = String::from_utf8_lossy(&d.data).into_owned();
            {
                let mut s = seen.lock();
                let n = s.delivered.entry(body.clone()).or_default();
                *n += 1;
                if *n > 1 && !d.redelivered {
                    s.fresh_again += 1;
                }
            }
            if d.ack(Default::default()).await.is_err() {
                break;
            }
            seen.lock()
                .acked
                .entry(body)
                .or_insert_with(|| (i, Instant::now()));
        }
    }
}

/// The Jepsen-style check on a replicated quorum queue, in-process: a producer with confirms
/// and a consumer with manual acks on every node, while each round one node is stopped and
/// restarted, isolated, the queue's leader isolated, cut off one way, or slowed (80 ms), then
/// healed. At the end every confirmed message was delivered at least once, and an acked
/// message came back only if the node its ack went through was in trouble after the ack.
/// `QUEUE_NEMESIS_ROUNDS` rounds (CI: 4; by hand more, figures in docs/clustering.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_nemesis_loses_no_confirmed_message() {
    use rand::Rng;
    let rounds: usize = std::env::var("QUEUE_NEMESIS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let mut c = Brokers::with_links().await;
    c.all_running().await;
    put_is(
        c.http(0),
        "/api/queues/%2F/nq",
        r#"{"durable":true,"arguments":{"x-queue-type":"quorum"}}"#,
        201,
    )
    .await;
    for i in 0..3 {
        c.wait_status(i, "/api/queues/%2F/nq", 200).await;
    }
    c.queue_leader("nq").await;
    let amqp: Amqp = Arc::new(Mutex::new(
        (0..3)
            .map(|i| c.brokers[i].as_ref().map(|b| b.local_addr()))
            .collect(),
    ));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_producers = tokio_util::sync::CancellationToken::new();
    let stop_consumers = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(tokio::spawn(nemesis_producer(
            i,
            amqp.clone(),
            seen.clone(),
            stop_producers.clone(),
        )));
        tasks.push(tokio::spawn(nemesis_consumer(
            i,
            amqp.clone(),
            seen.clone(),
            stop_consumers.clone(),
        )));
    }
    let mut rng = rand::thread_rng();
    let mut kinds = HashMap::new();
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = rng.gen_range(0..3);
        let kind = rng.gen_range(0..5);
        *kinds.entry(kind).or_insert(0) += 1;
        match kind {
            0 => {
                seen.lock().faults.push((victim, Instant::now()));
                (*amqp.lock())[victim] = None;
                c.stop(victim).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.start(victim).await;
                (*amqp.lock())[victim] = Some(c.brokers[victim].as_ref().unwrap().local_addr());
            }
            1 | 2 => {
                // An isolated node, or the queue's leader isolated (which cuts every node
                // off from the leader).
                let leader = c.queue_leader("nq").await;
                let v = if kind == 2 { leader } else { victim };
                let now = Instant::now();
                if v == leader {
                    seen.lock().faults.extend((0..3).map(|n| (n, now)));
                } else {
                    seen.lock().faults.push((v, now));
                }
                for ((a, b), l) in &c.links {
                    if *a == v || *b == v {
                        l.cut();
                    }
                }
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            3 => {
                let other = (victim + 1) % 3;
                seen.lock().faults.push((victim, Instant::now()));
                seen.lock().faults.push((other, Instant::now()));
                c.links[&(victim, other)].cut();
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            _ => {
                for ((a, b), l) in &c.links {
                    if *a == victim || *b == victim {
                        l.delay(Duration::from_millis(80));
                    }
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        for l in c.links.values() {
            l.heal();
        }
    }
    stop_producers.cancel();
    c.all_running().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<String> = {
            let s = seen.lock();
            s.confirmed
                .iter()
                .filter(|b| !s.delivered.contains_key(*b))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} confirmed messages never delivered: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_consumers.cancel();
    for t in tasks {
        let _ = t.await;
    }
    {
        let s = seen.lock();
        let mut twice = 0;
        for (body, n) in &s.delivered {
            if *n < 2 {
                continue;
            }
            twice += 1;
            if let Some((node, at)) = s.acked.get(body) {
                assert!(
                    s.faults.iter().any(|(f, t)| f == node && t >= at),
                    "{body} came back after its ack through node {node}, which was never in trouble after"
                );
            }
        }
        assert!(
            s.confirmed.len() > rounds * 10,
            "too few confirmed: {}",
            s.confirmed.len()
        );
        assert_eq!(s.fresh_again, 0, "messages enqueued twice");
        println!(
            "message nemesis: {rounds} rounds (stops, isolations, leader isolations, one-way cuts, slowdowns: {kinds:?}), {} confirmed, {} nacked, {} delivered, {twice} more than once, 0 confirmed lost",
            s.confirmed.len(),
            s.nacked,
            s.delivered.len()
        );
    }
    for i in 0..3 {
        c.stop(i).await;
    }
}

/// PUT, and check the status.
async fn put_is(addr: SocketAddr, path: &str, body: &str, want: u16) {
    let (s, v) = put(addr, path, body).await;
    assert_eq!(s, want, "PUT {path}: {v}");
}

async fn put(addr: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    common::http_body(addr, "PUT", path, ADMIN, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_changes_on_any_node_are_made_on_every_node() {
    let mut c = Brokers::new().await;
    c.all_running().await;
    let (_, nodes) = common::http(c.http(0), "GET", "/api/nodes", ADMIN).await;
    let names: Vec<_> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["warren-1", "warren-2", "warren-3"]);
    assert_eq!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["metadata_leader"] == true)
            .count(),
        1
    );

    // Changes made through three different nodes.
    put_is(c.http(1), "/api/vhosts/v1", "{}", 201).await;
    let (s, _) = put(
        c.http(2),
        "/api/users/alice",
        r#"{"password":"pw","tags":"management"}"#,
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = put(
        c.http(0),
        "/api/permissions/v1/alice",
        r#"{"configure":".*","write":".*","read":".*"}"#,
    )
    .await;
    assert_eq!(s, 201);
    put_is(
        c.http(1),
        "/api/exchanges/v1/x1",
        r#"{"type":"topic","durable":true}"#,
        201,
    )
    .await;
    put_is(c.http(2), "/api/queues/v1/q1", r#"{"durable":true}"#, 201).await;
    let (s, _) = common::http_body(
        c.http(0),
        "POST",
        "/api/bindings/v1/e/x1/q/q1",
        ADMIN,
        Some(r#"{"routing_key":"a.#"}"#),
    )
    .await;
    assert_eq!(s, 201);
    // The leader's checks answer for the cluster: an inequivalent redeclaration is refused
    // through any node, with the broker's own error.
    let (s, v) = put(
        c.http(2),
        "/api/exchanges/v1/x1",
        r#"{"type":"direct","durable":true}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("inequivalent"),
        "{v}"
    );

    for i in 0..3 {
        let x = c.wait_status(i, "/api/exchanges/v1/x1", 200).await;
        assert_eq!(x["type"], "topic");
        c.wait_status(i, "/api/queues/v1/q1", 200).await;
        c.wait_status(i, "/api/bindings/v1/e/x1/q/q1/a.%23", 200)
            .await;
        c.wait_status(i, "/api/permissions/v1/alice", 200).await;
        // The replicated user logs in on every node.
        let (s, _) = common::http(c.http(i), "GET", "/api/whoami", Some("alice:pw")).await;
        assert_eq!(s, 200, "alice on node {i}");
    }
    let (s, st) = common::http(c.http(1), "GET", "/api/warren/cluster", ADMIN).await;
    assert_eq!(s, 200);
    assert_eq!(st["node"], "warren-2");
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
    assert!(st["leader"].is_string(), "{st}");
    let (s, _) = common::http(c.http(1), "GET", "/api/warren/cluster", Some("alice:pw")).await;
    assert_eq!(s, 200);
    let (s, _) = common::http(
        c.http(1),
        "DELETE",
        "/api/warren/cluster/members/warren-3",
        Some("alice:pw"),
    )
    .await;
    assert_eq!(s, 401, "only administrators change members");
    let (s, _) = common::http(
        c.http(1),
        "DELETE",
        "/api/warren/cluster/members/nobody",
        ADMIN,
    )
    .await;
    assert_eq!(s, 404);

    // A node that was down while things changed catches up when it is back.
    c.stop(2).await;
    let (s, _) = common::http(c.http(0), "DELETE", "/api/exchanges/v1/x1", ADMIN).await;
    assert_eq!(s, 204);
    put_is(
        c.http(1),
        "/api/exchanges/v1/x2",
        r#"{"type":"fanout","durable":true}"#,
        201,
    )
    .await;
    c.start(2).await;
    c.wait_status(2, "/api/exchanges/v1/x2", 200).await;
    c.wait_status(2, "/api/exchanges/v1/x1", 404).await;
    c.all_running().await;
    for i in 0..3 {
        c.stop(i).await;
    }
}

/// The nemesis: while proposers on every node propose distinct commands, nodes are stopped
/// and restarted, isolated, cut off one way, slowed and healed (at most one node in trouble
/// at a time, so a majority is always there to be found). At the end, healed: every node
/// applied the same commands in the same order, every command whose proposal was answered is
/// among them, and none that was never proposed. `NEMESIS_ROUNDS` rounds (CI: 8; by hand
/// more, figures in docs/clustering.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_loses_no_committed_change() {
    use rand::Rng;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    if let Ok(filter) = std::env::var("NEMESIS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    let rounds: u32 = std::env::var("NEMESIS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let h = Arc::new(tokio::sync::Mutex::new(
        Harness::new(["s", "s", "s"], 50).await,
    ));
    h.lock().await.leader(LONG).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let attempted = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU32::new(0));
    let mut proposers = Vec::new();
    for i in 0..3 {
        let (h, acked, attempted, done, next) = (
            h.clone(),
            acked.clone(),
            attempted.clone(),
            done.clone(),
            next.clone(),
        );
        proposers.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let c = h.lock().await.nodes[i].cluster.clone();
                let Some(c) = c else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let n = next.fetch_add(1, Ordering::SeqCst);
                attempted.lock().insert(format!("{:?}", cmd(n)));
                if c.propose(cmd(n), Duration::from_secs(2)).await.is_ok() {
                    acked.lock().insert(format!("{:?}", cmd(n)));
                }
            }
        }));
    }
    let mut faults = Vec::new();
    for _ in 0..rounds {
        let fault = rand::thread_rng().gen_range(0..5);
        let victim = rand::thread_rng().gen_range(0..3);
        {
            let mut g = h.lock().await;
            match fault {
                0 => g.stop(victim).await,
                1 => g.isolate(victim),
                2 => {
                    let leader = (0..3)
                        .find(|&i| g.nodes[i].cluster.as_ref().is_some_and(|c| c.is_leader()));
                    g.isolate(leader.unwrap_or(victim));
                }
                3 => g.links[&(victim, (victim + 1) % 3)].cut(),
                _ => {
                    for ((a, b), l) in &g.links {
                        if *a == victim || *b == victim {
                            l.delay(Duration::from_millis(80));
                        }
                    }
                }
            }
        }
        faults.push(fault);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut g = h.lock().await;
        g.heal();
        for i in 0..3 {
            if g.nodes[i].cluster.is_none() {
                g.start(i).await;
            }
        }
        drop(g);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    done.store(true, Ordering::SeqCst);
    for p in proposers {
        p.await.unwrap();
    }
    let g = h.lock().await;
    g.leader(LONG).await;
    // Converged: the same sequence everywhere (waiting for the slowest to apply it all).
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let seqs: Vec<Vec<String>> = (0..3)
            .map(|i| {
                let applied = g.nodes[i].record.applied.lock();
                applied.iter().map(|c| format!("{c:?}")).collect()
            })
            .collect();
        let have: HashSet<&String> = seqs[0].iter().collect();
        if seqs[0] == seqs[1] && seqs[1] == seqs[2] && acked.lock().iter().all(|c| have.contains(c))
        {
            break seqs[0].clone();
        }
        if Instant::now() > deadline {
            let m: Vec<String> = (0..3)
                .map(|i| {
                    let m = g.nodes[i].cluster.as_ref().unwrap().raft().metrics().borrow().clone();
                    format!(
                        "node {i}: {:?} term {} last_log {:?} applied {:?} snapshot {:?} purged {:?} leader {:?}",
                        m.state, m.current_term, m.last_log_index, m.last_applied, m.snapshot, m.purged, m.current_leader
                    )
                })
                .collect();
            let first_diff = |a: &[String], b: &[String]| a.iter().zip(b).position(|(x, y)| x != y);
            panic!(
                "nodes did not converge: {} {} {} applied, {} acked; first differences 0/1 {:?} 0/2 {:?}; {m:#?}",
                seqs[0].len(),
                seqs[1].len(),
                seqs[2].len(),
                acked.lock().len(),
                first_diff(&seqs[0], &seqs[1]),
                first_diff(&seqs[0], &seqs[2]),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempted = attempted.lock().clone();
    assert!(applied.iter().all(|c| attempted.contains(c)));
    let acked = acked.lock().clone();
    assert!(
        acked.len() > rounds as usize,
        "too few commits: {}",
        acked.len()
    );
    let distinct: HashSet<_> = applied.iter().collect();
    eprintln!(
        "nemesis: {rounds} rounds (faults {faults:?}): {} proposed, {} acknowledged, {} applied ({} distinct), 0 acknowledged lost",
        attempted.len(),
        acked.len(),
        applied.len(),
        distinct.len()
    );
    let mut g = g;
    for i in 0..3 {
        g.stop(i).await;
    }
}
