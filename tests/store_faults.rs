//! The store under damage and disk faults: every kind of corruption recovery can meet (a
//! length, a type, the magic, random bytes in the last and in an older segment, a truncated
//! header, a zero-filled hole) costs exactly the records it touches, and every confirmed
//! message outside them comes back, in order; a full disk (a real, small tmpfs) nacks,
//! raises the disk alarm, keeps consumers draining, and recovers without a restart.

mod common;

use amq_protocol::types::FieldTable;
use common::*;
use lapin::Channel;
use lapin::options::*;
use lapin::types::ShortString;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren::Config;
use warren::config::StorageMode;
use warren::store::record;

fn ss(s: &str) -> ShortString {
    s.into()
}

fn disk_config(dir: &Path, segment: u64) -> Config {
    let mut c = Config::for_tests();
    c.storage.mode = StorageMode::Disk;
    c.data_dir = dir.to_path_buf();
    c.storage.segment_bytes = segment;
    c
}

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("m-{i:05}-").into_bytes();
    b.resize(4000, b'.');
    b
}

fn number(body: &[u8]) -> usize {
    std::str::from_utf8(&body[2..7]).unwrap().parse().unwrap()
}

async fn drain(ch: &Channel, q: &str) -> Vec<usize> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(ss(q), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(number(&m.delivery.data));
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let msgs = warren::store::vhost_dir(dir, "/").join("msgs");
    let mut v: Vec<_> = std::fs::read_dir(msgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// A publish record on disk: its segment (index into `segments`), byte range, message number.
#[derive(Debug, Clone, Copy)]
struct Rec {
    seg: usize,
    start: usize,
    end: usize,
    msg: usize,
}

fn records(dir: &Path) -> Vec<Rec> {
    let mut out = Vec::new();
    for (seg, path) in segments(dir).iter().enumerate() {
        let data = std::fs::read(path).unwrap();
        let mut pos = 0;
        while pos + record::HEADER <= data.len() {
            let (len, _) = record::parse_header(&data[pos..]).expect("a pristine log");
            let end = pos + record::HEADER + len as usize;
            let payload = &data[pos + record::HEADER..end];
            let at = payload.windows(2).position(|w| w == b"m-").unwrap();
            out.push(Rec {
                seg,
                start: pos,
                end,
                msg: number(&payload[at..]),
            });
            pos = end;
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

const MESSAGES: usize = 70;

/// A data dir holding `MESSAGES` confirmed persistent messages in queue `q`, over several
/// 64 KiB segments.
async fn pristine(dir: &Path) {
    let b = start_with(disk_config(dir, 65536)).await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(
        ss("q"),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for i in 0..MESSAGES {
        let c = ch
            .basic_publish(ss(""), ss("q"), Default::default(), &body(i), persistent())
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }
    drop(ch);
    b.shutdown(Duration::from_secs(2)).await;
}

/// Damage a copy of the pristine dir with `damage(segment files, records)`, which returns
/// the messages it destroyed; recover; check that exactly the others come back, in order,
/// and that the log takes new writes that survive another restart.
async fn case(
    name: &str,
    pristine_dir: &Path,
    damage: impl FnOnce(&[PathBuf], &[Rec]) -> BTreeSet<usize>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(pristine_dir, dir);
    let recs = records(dir);
    let lost = damage(&segments(dir), &recs);
    let b = start_with(disk_config(dir, 65536)).await;
    let (_c, ch) = channel(&b).await;
    let got = drain(&ch, "q").await;
    let want: Vec<usize> = (0..MESSAGES).filter(|i| !lost.contains(i)).collect();
    assert_eq!(got, want, "{name}: lost {lost:?}");
    ch.confirm_select(Default::default()).await.unwrap();
    let c = ch
        .basic_publish(
            ss(""),
            ss("q"),
            Default::default(),
            &body(999),
            persistent(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
    drop(ch);
    b.shutdown(Duration::from_secs(2)).await;
    let b = start_with(disk_config(dir, 65536)).await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(
        drain(&ch, "q").await,
        vec![999],
        "{name}: after another restart"
    );
    b.shutdown(Duration::from_secs(2)).await;
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

/// The messages whose records intersect `[from, to)` of segment `seg`.
fn hit(recs: &[Rec], seg: usize, from: usize, to: usize) -> BTreeSet<usize> {
    recs.iter()
        .filter(|r| r.seg == seg && r.start < to && from < r.end)
        .map(|r| r.msg)
        .collect()
}

#[tokio::test]
async fn every_kind_of_damage_costs_only_the_records_it_touches() {
    let base = tempfile::tempdir().unwrap();
    pristine(base.path()).await;
    let recs = records(base.path());
    let nsegs = segments(base.path()).len();
    assert!(nsegs >= 4, "the messages span several segments ({nsegs})");
    let last = nsegs - 1;
    // A record in the middle of the last segment, and one in the middle of an older one.
    let mid = |seg: usize| {
        let in_seg: Vec<Rec> = recs.iter().filter(|r| r.seg == seg).copied().collect();
        in_seg[in_seg.len() / 2]
    };
    let (m_last, m_old) = (mid(last), mid(1));

    case("a length", base.path(), |segs, _| {
        patch(&segs[m_last.seg], m_last.start + 5, &[0x7f]);
        BTreeSet::from([m_last.msg])
    })
    .await;
    case("a type", base.path(), |segs, _| {
        patch(&segs[m_old.seg], m_old.start + record::HEADER, &[9]);
        BTreeSet::from([m_old.msg])
    })
    .await;
    case("the magic", base.path(), |segs, _| {
        patch(&segs[m_last.seg], m_last.start, b"XXXX");
        BTreeSet::from([m_last.msg])
    })
    .await;
    case("a header checksum", base.path(), |segs, _| {
        patch(&segs[m_old.seg], m_old.start + 13, &[0]);
        BTreeSet::from([m_old.msg])
    })
    .await;
    for (label, seg) in [
        ("random bytes, last segment", last),
        ("random bytes, older", 1),
    ] {
        case(label, base.path(), |segs, recs| {
            let r = mid(seg);
            let at = r.start + 200;
            let junk: Vec<u8> = (0..64u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            patch(&segs[seg], at, &junk);
            hit(recs, seg, at, at + 64)
        })
        .await;
    }
    case("a zero-filled hole", base.path(), |segs, recs| {
        let r = mid(1);
        let at = r.start + 100;
        patch(&segs[1], at, &[0u8; 1000]);
        hit(recs, 1, at, at + 1000)
    })
    .await;
    case(
        "a truncated header at the end",
        base.path(),
        |segs, recs| {
            let r = *recs.iter().rfind(|r| r.seg == last).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&segs[last])
                .unwrap();
            f.set_len((r.start + 7) as u64).unwrap();
            BTreeSet::from([r.msg])
        },
    )
    .await;
    case(
        "a header cut short in an older segment",
        base.path(),
        |segs, recs| {
            // The older segment loses its last 9 bytes: its last record is cut.
            let r = *recs.iter().rfind(|r| r.seg == 1).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&segs[1])
                .unwrap();
            f.set_len((r.end - 9) as u64).unwrap();
            BTreeSet::from([r.msg])
        },
    )
    .await;
    case(
        "garbage appended to the last segment",
        base.path(),
        |segs, _| {
            let mut data = std::fs::read(&segs[last]).unwrap();
            data.extend_from_slice(&[0xa5; 333]);
            std::fs::write(&segs[last], data).unwrap();
            BTreeSet::new()
        },
    )
    .await;
}

/// A small, real filesystem: a tmpfs mounted for the test (root only; `None` and a note on
/// stderr where mounting is not permitted). Unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn declare_durable(ch: &Channel, q: &str) {
    ch.queue_declare(
        ss(q),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn publish_confirmed(ch: &Channel, q: &str, i: usize, size: usize) -> bool {
    let mut b = body(i);
    b.resize(size, b'.');
    ch.basic_publish(ss(""), ss(q), Default::default(), &b, persistent())
        .await
        .unwrap()
        .await
        .unwrap()
        .is_ack()
}

/// A full disk (a 4 MiB tmpfs, the disk alarm off): publishing with confirms until it is full
/// gets nacks, never a false ack; consumers keep draining and their acks free the space; then
/// confirms resume without a restart, and after a restart exactly the confirmed messages that
/// were not consumed are there.
#[tokio::test]
async fn a_full_disk_nacks_drains_frees_space_and_recovers_without_a_restart() {
    let Some(fs) = Tmpfs::mount(4 << 20) else {
        return;
    };
    let mut cfg = disk_config(fs.path(), 256 * 1024);
    cfg.disk.free_limit = 0;
    let b = start_with(cfg.clone()).await;
    let log = b.state().vhost("/").unwrap().log().unwrap().clone();
    let (_c, ch) = channel(&b).await;
    declare_durable(&ch, "q").await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut acked = 0;
    let mut i = 0;
    while i < 2000 && publish_confirmed(&ch, "q", i, 8000).await {
        acked += 1;
        i += 1;
    }
    assert!(i < 2000, "4 MiB cannot hold 16 MB: publishes are nacked");
    assert!(acked > 100, "most of the disk was used first ({acked})");
    // Full: every further publish is nacked at once.
    for k in 0..20 {
        assert!(!publish_confirmed(&ch, "q", 5000 + k, 8000).await);
    }
    assert!(log.stats().unwrap().refusing);
    // A consumer drains everything (the nacked messages were still queued, in memory) and
    // acks: removal records go to the reserved space, and whole segments are deleted.
    let c2 = lapin_connect(&b).await;
    let consumer_ch = c2.create_channel().await.unwrap();
    let mut got = 0;
    while let Some(m) = consumer_ch
        .basic_get(ss("q"), BasicGetOptions::default())
        .await
        .unwrap()
    {
        m.ack(BasicAckOptions::default()).await.unwrap();
        got += 1;
    }
    assert_eq!(got, acked + 1 + 20, "every message queued was delivered");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !log.stats().unwrap().refusing
        })
        .await,
        "acking everything frees the space: the log takes messages again"
    );
    // Confirms resume, no restart needed.
    for k in 0..10 {
        assert!(publish_confirmed(&ch, "q", 7000 + k, 8000).await, "#{k}");
    }
    drop(ch);
    drop(consumer_ch);
    b.shutdown(Duration::from_secs(2)).await;
    let b = start_with(cfg).await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(drain(&ch, "q").await, (7000..7010).collect::<Vec<_>>());
    b.shutdown(Duration::from_secs(2)).await;
}

/// The disk alarm: free space below `disk.free_limit` blocks publishing connections
/// (`connection.blocked` "low on disk"), shows in the management API's alarm health check and
/// node, lets consumers go on, and clears when space is freed.
#[tokio::test]
async fn low_free_space_raises_the_disk_alarm_until_space_is_freed() {
    use amq_protocol::protocol::AMQPClass;
    use amq_protocol::protocol::connection as conn;
    let Some(fs) = Tmpfs::mount(8 << 20) else {
        return;
    };
    let mut cfg = disk_config(fs.path(), 1 << 20);
    cfg.disk.free_limit = 4 << 20;
    cfg.disk.check_interval_ms = 20;
    cfg.management.enabled = true;
    cfg.management.bind = "127.0.0.1".into();
    cfg.management.port = 0;
    let b = start_with(cfg).await;
    let mgmt = b.management_addr().unwrap();
    let guest = Some("guest:guest");
    assert_eq!(
        http(mgmt, "GET", "/api/health/checks/alarms", guest).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (_c, ch) = channel(&b).await;
    declare_durable(&ch, "q").await;
    ch.basic_publish(ss(""), ss("q"), Default::default(), b"before", persistent())
        .await
        .unwrap();
    // Something else fills the disk past the limit.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 5 << 20]).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.state().alarms.borrow().disk
        })
        .await
    );
    let (status, body) = http(mgmt, "GET", "/api/health/checks/alarms", guest).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "There are alarms in effect in the cluster");
    // Recorded from RabbitMQ 3.10.8 (`rabbitmqctl set_disk_free_limit` above free space).
    assert_eq!(body["alarms"][0]["resource"], "disk space");
    assert_eq!(body["alarms"].as_array().unwrap().len(), 1);
    let (_, nodes) = http(mgmt, "GET", "/api/nodes", guest).await;
    assert_eq!(nodes[0]["disk_free_alarm"], true);
    assert_eq!(nodes[0]["disk_free_limit"], 4 << 20);
    assert!(nodes[0]["disk_free"].as_u64().unwrap() < 4 << 20);
    // A connection that publishes is blocked with RabbitMQ's reason.
    let mut p = Raw::open(&b).await;
    p.open_channel(1).await;
    p.publish(1, "", "q", 0, b"trigger").await;
    match p.expect_method(0, 10, 60).await {
        AMQPClass::Connection(conn::AMQPMethod::Blocked(m)) => {
            assert_eq!(m.reason.as_str(), "low on disk")
        }
        other => panic!("{other:?}"),
    }
    p.publish(1, "", "q", 0, b"held back").await;
    // Consumers go on.
    let m = ch
        .basic_get(ss("q"), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the consumer is not blocked");
    assert_eq!(m.delivery.data, b"before");
    let q = b.state().vhost("/").unwrap().queue("q").unwrap();
    assert_eq!(q.message_count(), 1, "the held-back publish was not read");
    // Space comes back: the alarm clears and the connection is unblocked.
    std::fs::remove_file(&filler).unwrap();
    p.expect_method(0, 10, 61).await;
    assert!(eventually(Duration::from_secs(5), || async { q.message_count() == 2 }).await);
    assert_eq!(
        http(mgmt, "GET", "/api/health/checks/alarms", guest)
            .await
            .0,
        200
    );
    b.shutdown(Duration::from_secs(2)).await;
}

/// A message whose only queue is done with it before the writer reaches its record is not
/// written: a skip header stands for each run of such records (their space a hole when the
/// run is long, zeros when short), recovery steps over it, and a log that ends inside a hole
/// is cut at its skip header, so new records follow intact ones.
#[tokio::test]
async fn records_of_messages_consumed_first_are_left_out() {
    use std::sync::Arc;
    use warren::message::{ConfirmGate, Message};
    use warren::store::log::{self, Options, SyncPolicy};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("msgs");
    let opts = || Options {
        policy: SyncPolicy::Confirm,
        interval: Duration::from_millis(10),
        queue_memory: 0,
        segment_size: 1 << 20,
        journal_dir: None,
    };
    let msg = |tag: u8, size: usize| {
        Message::recovered(
            0,
            bytes::Bytes::new(),
            bytes::Bytes::from_static(b"k"),
            bytes::Bytes::from_static(&[0, 0]),
            bytes::Bytes::from(vec![tag; size]),
        )
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let gate = |left: bool| {
        let tx = tx.clone();
        let g = ConfirmGate::new(Box::new(move |ok| tx.send(ok).unwrap()), 1);
        // Its queue was done with it before the writer saw it.
        assert!(!left || g.cancel_write());
        g
    };
    let q: Arc<str> = Arc::from("q");
    let log = log::open(&dir, opts(), &|_| true).unwrap().log;
    // A (64 KiB) left out: a hole; C kept; B (100 B) left out: zeros; D kept; E (64 KiB) left
    // out, last: the file ends with its skip header.
    let plan = [
        (b'A', 65536, true),
        (b'C', 1000, false),
        (b'B', 100, true),
        (b'D', 1000, false),
        (b'E', 65536, true),
    ];
    let mut locs = Vec::new();
    for (tag, size, left) in plan {
        let m = log.append_publish(msg(tag, size), q.clone(), gate(left));
        locs.push(m.store_id().unwrap());
    }
    log.barrier();
    let stats = log.stats().unwrap();
    assert_eq!((stats.skipped, stats.live), (3, 2), "{stats:?}");
    assert_eq!(rx.try_iter().filter(|ok| *ok).count(), 5, "all confirmed");
    let seg_path = dir.join("000000000001.seg");
    let seg = std::fs::read(&seg_path).unwrap();
    let off = |i: usize| (locs[i] & 0xffff_ffff) as usize;
    let h = record::HEADER;
    assert_eq!(off(0), 0);
    assert_eq!(
        record::parse_skip(&seg[off(0)..]),
        Some((off(1) - h) as u32)
    );
    assert!(record::parse_header(&seg[off(1)..]).is_some());
    assert_eq!(
        record::parse_skip(&seg[off(2)..]),
        Some((off(3) - off(2) - h) as u32)
    );
    assert!(record::parse_header(&seg[off(3)..]).is_some());
    assert!(record::parse_skip(&seg[off(4)..]).is_some());
    assert_eq!(seg.len(), off(4) + h, "E's space is not written");
    assert!(seg[h..off(1)].iter().all(|b| *b == 0), "A's space is empty");
    assert!(seg[off(2) + h..off(3)].iter().all(|b| *b == 0));
    log.close();
    drop(log);

    let opened = log::open(&dir, opts(), &|_| true).unwrap();
    assert_eq!(opened.corrupt_records, 0);
    let got: Vec<u64> = opened.queues["q"].iter().map(|m| m.loc).collect();
    assert_eq!(got, vec![locs[1], locs[3]]);
    assert_eq!(
        std::fs::metadata(&seg_path).unwrap().len() as usize,
        off(4),
        "cut at the skip header the file ended in"
    );
    let log = opened.log;
    assert_eq!(log.read(locs[3], 1000).unwrap().body, vec![b'D'; 1000]);
    let f = log.append_publish(msg(b'F', 10), q.clone(), gate(false));
    assert_eq!(f.store_id(), Some(locs[4]), "F follows D");
    log.barrier();
    assert_eq!(log.stats().unwrap().live, 3);
    log.close();
    drop(log);

    let opened = log::open(&dir, opts(), &|_| true).unwrap();
    assert_eq!(opened.corrupt_records, 0);
    let got: Vec<u64> = opened.queues["q"].iter().map(|m| m.loc).collect();
    assert_eq!(got, vec![locs[1], locs[3], locs[4]]);
    assert_eq!(opened.log.read(locs[4], 10).unwrap().body, vec![b'F'; 10]);
    assert_eq!(
        opened.log.read(locs[1], 1000).unwrap().body,
        vec![b'C'; 1000]
    );
    opened.log.close();
}

/// Flow control: when publishers outrun the store's writer (here its next segment is a FIFO
/// nobody reads yet, so the writer blocks opening it), the records waiting for it pass
/// 64 MiB and the log asks publishing connections to pause; once the writer catches up
/// (something reads the FIFO) they are released.
#[tokio::test]
async fn publishers_pause_while_the_writer_is_behind() {
    use warren::store::log::{self, Options, SyncPolicy};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("msgs");
    std::fs::create_dir(&dir).unwrap();
    let opts = Options {
        policy: SyncPolicy::Never,
        interval: Duration::from_millis(10),
        queue_memory: 0,
        segment_size: 1 << 20,
        journal_dir: None,
    };
    let opened = log::open(&dir, opts, &|_| true).unwrap();
    let log = opened.log;
    // After recovery (which would block reading it).
    let fifo = dir.join("000000000002.seg");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    assert!(log.flow().is_none(), "nothing waiting");
    let msg = warren::message::Message::recovered(
        0,
        bytes::Bytes::new(),
        bytes::Bytes::from_static(b"k"),
        bytes::Bytes::from_static(&[0, 0]),
        bytes::Bytes::from(vec![7u8; 64 * 1024]),
    );
    // 80 MiB of records: segment 1 fills, the writer blocks on the FIFO.
    for _ in 0..1280 {
        log.append(log::publish_record(0, 0, &[("q", false, 0)], &msg), None)
            .unwrap();
    }
    let mut rx = log.flow().expect("the writer is more than 64 MiB behind");
    assert!(*rx.borrow());
    // The writer gets going again: a reader drains the FIFO.
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&fifo).unwrap();
        std::io::copy(&mut f, &mut std::io::sink()).unwrap()
    });
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|paused| !*paused))
        .await
        .expect("released once the writer caught up")
        .unwrap();
    assert!(log.flow().is_none());
    log.close();
    drop(log);
    let _ = reader.join();
}

/// The measured case: a disk smaller than one segment (8 MiB tmpfs, 64 MiB segments,
/// the default). Confirmed publishing fills it (nacks); acking everything leaves one segment
/// full of dead messages, which cannot be deleted while it is the one being appended to — so
/// the log starts afresh in a new segment (nothing in it is live), the space comes back and
/// confirms resume without a restart.
#[tokio::test]
async fn acking_everything_frees_a_single_full_segment() {
    let Some(fs) = Tmpfs::mount(8 << 20) else {
        return;
    };
    let mut cfg = disk_config(fs.path(), 64 << 20);
    cfg.disk.free_limit = 0;
    let b = start_with(cfg.clone()).await;
    let log = b.state().vhost("/").unwrap().log().unwrap().clone();
    let (_c, ch) = channel(&b).await;
    declare_durable(&ch, "q").await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut acked = 0;
    while acked < 2000 && publish_confirmed(&ch, "q", acked, 8000).await {
        acked += 1;
    }
    assert!(
        acked < 2000 && acked > 100,
        "{acked} confirmed before the disk filled"
    );
    assert_eq!(log.stats().unwrap().segments, 1);
    assert!(log.stats().unwrap().refusing);
    let mut got = 0;
    while let Some(m) = ch
        .basic_get(ss("q"), BasicGetOptions::default())
        .await
        .unwrap()
    {
        m.ack(BasicAckOptions::default()).await.unwrap();
        got += 1;
    }
    assert_eq!(got, acked + 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !log.stats().unwrap().refusing
        })
        .await,
        "the log started afresh and takes messages again: {:?}",
        log.stats()
    );
    for k in 0..10 {
        assert!(publish_confirmed(&ch, "q", 7000 + k, 8000).await, "#{k}");
    }
    drop(ch);
    b.shutdown(Duration::from_secs(2)).await;
    let b = start_with(cfg).await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(drain(&ch, "q").await, (7000..7010).collect::<Vec<_>>());
    b.shutdown(Duration::from_secs(2)).await;
}
