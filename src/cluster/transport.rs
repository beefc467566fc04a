//! The inter-node transport: TCP between nodes, length-prefixed JSON frames (at most
//! [`MAX_FRAME`]), request and response in turn on each connection. A connection starts with a
//! challenge: the listening node sends its cluster name and a random nonce; the dialling node
//! answers with its node id and SHA-256(secret ‖ nonce), compared in constant time (RabbitMQ's
//! Erlang cookie plays this part). A node of another cluster, or with another secret, is refused
//! and the connection closed; no frame of it reaches Raft.
//!
//! Carries openraft's RPCs (vote, append entries, snapshot chunks) and forwarded proposals (a
//! node that is not the leader sends a client's change to the leader).

use super::{Command, GroupId, Member, Meta, NodeId, Reply};
use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// The largest frame either side accepts: an append of up to 32 entries (`max_payload_entries`),
/// each at most a 20 MiB definitions import (escaped: up to ~27 MiB). Nine or more such imports
/// in one batch would not fit: a documented limit.
pub const MAX_FRAME: usize = 256 << 20;

/// How long a connection may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's byte stream: TCP, or TLS over it (`cluster.tls`).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Io for T {}

type Conn = Framed<Box<dyn Io>, LengthDelimitedCodec>;

/// TLS between nodes: the acceptor for connections in, the connector for connections out.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

#[derive(Serialize, Deserialize)]
struct Challenge {
    cluster: String,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    node: NodeId,
    proof: String,
}

/// A request between nodes, to one Raft group (0: metadata; a quorum queue's otherwise).
#[derive(Serialize)]
struct Frame<'a> {
    group: GroupId,
    req: &'a Request,
}

#[derive(Serialize, Deserialize)]
struct FrameIn {
    group: GroupId,
    req: Request,
}

/// A request between nodes.
#[derive(Serialize, Deserialize)]
enum Request {
    Vote(VoteRequest<NodeId>),
    Append(AppendEntriesRequest<Meta>),
    Snapshot(Chunk),
    Propose(Command),
    Change(Change),
    Ping,
}

/// A snapshot chunk on the wire: openraft's `InstallSnapshotRequest` with its bytes in base64
/// (JSON would write them as an array of numbers, about 3.5 bytes per byte).
#[derive(Serialize, Deserialize)]
struct Chunk {
    vote: openraft::Vote<NodeId>,
    meta: openraft::SnapshotMeta<NodeId, Member>,
    offset: u64,
    data: String,
    done: bool,
}

impl From<InstallSnapshotRequest<Meta>> for Chunk {
    fn from(r: InstallSnapshotRequest<Meta>) -> Chunk {
        use base64::Engine;
        Chunk {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: base64::engine::general_purpose::STANDARD.encode(&r.data),
            done: r.done,
        }
    }
}

impl Chunk {
    fn into_request(self) -> io::Result<InstallSnapshotRequest<Meta>> {
        use base64::Engine;
        Ok(InstallSnapshotRequest {
            vote: self.vote,
            meta: self.meta,
            offset: self.offset,
            data: base64::engine::general_purpose::STANDARD
                .decode(self.data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            done: self.done,
        })
    }
}

/// A membership change, made by the leader.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Change {
    /// Add a node: first as a learner that catches up, then as a voter.
    Join(Member),
    /// Remove a node from the voters and the members.
    Leave(NodeId),
}

/// What a node asks of the leader.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Propose(Command),
    Change(Change),
}

/// Why a forwarded proposal was not applied.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ProposeError {
    /// The receiving node is not the leader (the leader it knows of, if any).
    NotLeader(Option<NodeId>),
    /// No leader could be reached in time.
    Unavailable(String),
}

#[derive(Serialize, Deserialize)]
enum Response {
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Propose(Result<Reply, ProposeError>),
    Change(Result<Reply, ProposeError>),
    Pong,
    /// The group is not (yet, or any longer) on this node: a queue's group starts when the
    /// node applies the queue's declaration, which may lag the other members'.
    NoGroup,
}

/// The largest frame before a connection has proved its secret (the challenge and hello).
const HANDSHAKE_FRAME: usize = 4096;

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec()
}

fn proof(secret: &str, nonce: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update(nonce.as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send<T: Serialize>(conn: &mut Conn, v: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(v).map_err(io::Error::other)?;
    conn.send(bytes::Bytes::from(bytes)).await
}

async fn recv<T: for<'a> Deserialize<'a>>(conn: &mut Conn) -> io::Result<T> {
    match conn.next().await {
        Some(frame) => serde_json::from_slice(&frame?).map_err(|e| io::Error::other(e.to_string())),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// What both ends of a connection need to know.
#[derive(Clone)]
pub struct Auth {
    pub cluster: String,
    pub secret: String,
    pub node: NodeId,
    pub tls: Option<Tls>,
}

/// Serve other nodes' requests on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    groups: Groups,
    auth: Auth,
    seen: Arc<DashMap<NodeId, Instant>>,
    stop: CancellationToken,
) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let groups = groups.clone();
        let auth = auth.clone();
        let stop = stop.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = serve_conn(sock, groups, auth, seen) => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "cluster connection closed");
                }
            }
        });
    }
}

/// The Raft groups this node is a member of, by id.
pub type Groups = Arc<DashMap<GroupId, Raft<Meta>>>;

async fn serve_conn(
    sock: TcpStream,
    groups: Groups,
    auth: Auth,
    seen: Arc<DashMap<NodeId, Instant>>,
) -> io::Result<()> {
    let _ = sock.set_nodelay(true);
    let nonce = hex(&rand::random::<[u8; 32]>());
    let (mut conn, hello): (Conn, Hello) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let io: Box<dyn Io> = match &auth.tls {
            Some(t) => Box::new(t.acceptor.accept(sock).await?),
            None => Box::new(sock),
        };
        let mut conn = Framed::new(io, codec(HANDSHAKE_FRAME));
        send(
            &mut conn,
            &Challenge {
                cluster: auth.cluster.clone(),
                nonce: nonce.clone(),
            },
        )
        .await?;
        let hello = recv(&mut conn).await?;
        Ok::<_, io::Error>((conn, hello))
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let want = proof(&auth.secret, &nonce);
    if !bool::from(want.as_bytes().ct_eq(hello.proof.as_bytes())) {
        tracing::warn!(
            node = hello.node,
            "cluster: a node with a wrong secret was refused"
        );
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "bad proof"));
    }
    // Proved: now frames as large as the cluster sends.
    conn.codec_mut().set_max_frame_length(MAX_FRAME);
    loop {
        let FrameIn { group, req } = recv(&mut conn).await?;
        seen.insert(hello.node, Instant::now());
        if let Request::Ping = req {
            send(&mut conn, &Response::Pong).await?;
            continue;
        }
        let Some(raft) = groups.get(&group).map(|r| r.clone()) else {
            send(&mut conn, &Response::NoGroup).await?;
            continue;
        };
        let resp = match req {
            Request::Vote(r) => Response::Vote(raft.vote(r).await),
            Request::Append(r) => Response::Append(raft.append_entries(r).await),
            Request::Snapshot(c) => {
                Response::Snapshot(raft.install_snapshot(c.into_request()?).await)
            }
            Request::Propose(c) => Response::Propose(propose_local(&raft, c).await),
            Request::Change(c) => Response::Change(change_local(&raft, c).await),
            Request::Ping => Response::Pong,
        };
        send(&mut conn, &resp).await?;
    }
}

/// Propose on this node, if it leads.
pub(super) async fn propose_local(raft: &Raft<Meta>, cmd: Command) -> Result<Reply, ProposeError> {
    use openraft::error::ClientWriteError;
    match raft.client_write(cmd).await {
        Ok(r) => Ok(r.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ProposeError::NotLeader(f.leader_id))
        }
        Err(e) => Err(ProposeError::Unavailable(e.to_string())),
    }
}

/// Make a membership change on this node, if it leads.
pub(super) async fn change_local(raft: &Raft<Meta>, change: Change) -> Result<Reply, ProposeError> {
    use openraft::ChangeMembers;
    use openraft::error::ClientWriteError;
    let r = match change {
        Change::Join(m) => {
            let id = super::node_id(&m.name);
            match raft.add_learner(id, m, true).await {
                Ok(_) => {
                    raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Change::Leave(id) => {
            raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                .await
        }
    };
    match r {
        Ok(_) => Ok(Reply::default()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ProposeError::NotLeader(f.leader_id))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Ok(Reply {
            error: Some(e.to_string()),
            ..Default::default()
        }),
        Err(e) => Err(ProposeError::Unavailable(e.to_string())),
    }
}

/// Where a node is dialled: its advertised address, or (tests) a route through a proxy.
pub type Resolve = Arc<dyn Fn(NodeId, &Member) -> String + Send + Sync>;

/// A connection to one peer, dialled on first use and again after any failure.
pub struct Peer {
    group: GroupId,
    target: NodeId,
    addr: String,
    auth: Auth,
    conn: Option<Conn>,
    /// A request is on the connection and its response not yet read. Still set when a call
    /// starts, the last call was dropped half-way (openraft times its RPCs out by dropping
    /// them): its response may still come, so the connection is not used again.
    busy: bool,
}

impl Peer {
    pub fn new(group: GroupId, target: NodeId, addr: String, auth: Auth) -> Peer {
        Peer {
            group,
            target,
            addr,
            auth,
            conn: None,
            busy: false,
        }
    }

    async fn dial(&self) -> io::Result<Conn> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::other("no address"))?;
        let sock = TcpStream::connect(addr).await?;
        let _ = sock.set_nodelay(true);
        let io: Box<dyn Io> = match &self.auth.tls {
            Some(t) => {
                let host = self.addr.rsplit_once(':').map_or(&*self.addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Box::new(t.connector.connect(name, sock).await?)
            }
            None => Box::new(sock),
        };
        let mut conn = Framed::new(io, codec(MAX_FRAME));
        let ch: Challenge = recv(&mut conn).await?;
        if ch.cluster != self.auth.cluster {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("node {} is in cluster '{}'", self.target, ch.cluster),
            ));
        }
        let hello = Hello {
            node: self.auth.node,
            proof: proof(&self.auth.secret, &ch.nonce),
        };
        send(&mut conn, &hello).await?;
        Ok(conn)
    }

    /// One request and its response; `Err(true)` when the peer could not be reached at all.
    async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, (bool, io::Error)> {
        if self.busy {
            self.conn = None;
        }
        self.busy = true;
        let r = tokio::time::timeout(ttl, async {
            let fresh = self.conn.is_none();
            if fresh {
                self.conn = Some(self.dial().await.map_err(|e| (true, e))?);
            }
            let conn = self.conn.as_mut().unwrap();
            let frame = Frame {
                group: self.group,
                req,
            };
            send(conn, &frame).await.map_err(|e| (false, e))?;
            recv::<Response>(conn).await.map_err(|e| (false, e))
        })
        .await
        .unwrap_or_else(|_| Err((false, io::ErrorKind::TimedOut.into())));
        if r.is_err() {
            // A response may still be on its way: never reuse a connection after a failure.
            self.conn = None;
        }
        self.busy = false;
        r
    }

    /// Whether the peer answers within `ttl`.
    pub async fn ping(&mut self, ttl: Duration) -> bool {
        matches!(self.call(&Request::Ping, ttl).await, Ok(Response::Pong))
    }

    /// Forward a proposal or a membership change to this peer.
    pub(super) async fn forward(&mut self, op: Op, ttl: Duration) -> Result<Reply, ProposeError> {
        let req = match op {
            Op::Propose(c) => Request::Propose(c),
            Op::Change(c) => Request::Change(c),
        };
        match self.call(&req, ttl).await {
            Ok(Response::Propose(r)) | Ok(Response::Change(r)) => r,
            Ok(Response::NoGroup) => Err(ProposeError::Unavailable(
                "the group is not on the leader".into(),
            )),
            Ok(_) => Err(ProposeError::Unavailable("unexpected response".into())),
            Err((_, e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }
}

fn rpc_error<E: std::error::Error>(
    target: NodeId,
    (unreachable, e): (bool, io::Error),
) -> RPCError<NodeId, Member, E> {
    let _ = target;
    if unreachable {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&io::Error::other("unexpected response")))
}

impl RaftNetwork<Meta> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Meta>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(&Request::Append(rpc), option.hard_ttl()).await {
            Ok(Response::Append(Ok(r))) => Ok(r),
            Ok(Response::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Meta>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(&Request::Snapshot(rpc.into()), option.hard_ttl())
            .await
        {
            Ok(Response::Snapshot(Ok(r))) => Ok(r),
            Ok(Response::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(&Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Response::Vote(Ok(r))) => Ok(r),
            Ok(Response::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(self.target, e)),
        }
    }
}

/// Makes a [`Peer`] per target for openraft, for one group.
#[derive(Clone)]
pub struct Network {
    pub group: GroupId,
    pub auth: Auth,
    pub resolve: Resolve,
}

impl RaftNetworkFactory<Meta> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer::new(
            self.group,
            target,
            (self.resolve)(target, node),
            self.auth.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_secret_and_nonce() {
        assert_eq!(proof("s", "n"), proof("s", "n"));
        assert_ne!(proof("s", "n"), proof("t", "n"));
        assert_ne!(proof("s", "n"), proof("s", "m"));
        assert_eq!(proof("s", "n").len(), 64);
    }
}
