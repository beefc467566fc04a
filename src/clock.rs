//! The broker's clock for what messages and queues do over time: message TTL, `x-expires`,
//! delayed messages, consumer timeouts and `x-death` times. Real time, or (test environments
//! only: `[testing] clock = "manual"`, `--test-clock`) a manual clock that stands still until
//! advanced (`POST /api/warren/clock`). Heartbeats, handshake and network timeouts, disk
//! retries and statistics always use real time.
//!
//! Every timer of the features above sleeps through [`sleep_until`]. With the manual clock a
//! sleeper registers its deadline, so [`advance`] can move time from deadline to deadline,
//! waking each in turn and letting what it does (expire, dead-letter, deliver, enqueue with a
//! new deadline) settle before time moves on: an hour advanced at once expires, dead-letters
//! and delivers what an hour would, in deadline order.
//!
//! The clock is process-wide (one broker per process in practice; in-process tests that turn
//! it on run in a test binary of their own).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();
static MANUAL_ON: AtomicBool = AtomicBool::new(false);

/// The manual clock's state.
struct Manual {
    /// Its time: ms on the same scale as [`now_ms`].
    now: AtomicU64,
    /// Unix ms at its time 0.
    wall_base: u64,
    /// Wakes sleepers when time moves.
    moved: tokio::sync::watch::Sender<u64>,
    /// Registered sleepers: (deadline, id).
    sleepers: Mutex<BTreeMap<(u64, u64), ()>>,
    next_id: AtomicU64,
    /// Bumped whenever a sleeper registers or leaves (settling watches it).
    changes: AtomicU64,
    /// One advance at a time.
    advancing: tokio::sync::Mutex<()>,
}

static MANUAL: OnceLock<Manual> = OnceLock::new();

fn real_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn real_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn manual() -> Option<&'static Manual> {
    if MANUAL_ON.load(Ordering::Relaxed) {
        MANUAL.get()
    } else {
        None
    }
}

/// Turn the manual clock on (from now on, time stands still until advanced). Idempotent.
pub fn enable_manual() {
    let now = real_ms();
    MANUAL.get_or_init(|| Manual {
        now: AtomicU64::new(now),
        wall_base: real_wall_ms() - now,
        moved: tokio::sync::watch::Sender::new(now),
        sleepers: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
        changes: AtomicU64::new(0),
        advancing: tokio::sync::Mutex::new(()),
    });
    MANUAL_ON.store(true, Ordering::Release);
}

/// Whether the manual clock is on.
pub fn is_manual() -> bool {
    manual().is_some()
}

/// Milliseconds on the broker's monotonic scale (since the process started, or the manual
/// clock's time).
pub fn now_ms() -> u64 {
    match manual() {
        Some(m) => m.now.load(Ordering::Acquire),
        None => real_ms(),
    }
}

/// Unix time in ms (the manual clock moves it too).
pub fn wall_ms() -> u64 {
    match manual() {
        Some(m) => m.wall_base + m.now.load(Ordering::Acquire),
        None => real_wall_ms(),
    }
}

/// Sleep until [`now_ms`] reaches `deadline`.
pub async fn sleep_until(deadline: u64) {
    let Some(m) = manual() else {
        let left = deadline.saturating_sub(real_ms());
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
        return;
    };
    if m.now.load(Ordering::Acquire) >= deadline {
        return;
    }
    let id = m.next_id.fetch_add(1, Ordering::Relaxed);
    let _registered = Registered::new(m, deadline, id);
    let mut rx = m.moved.subscribe();
    let _ = rx.wait_for(|now| *now >= deadline).await;
}

/// A sleeper's place in the registry, left when the sleep ends or is dropped.
struct Registered {
    m: &'static Manual,
    key: (u64, u64),
}

impl Registered {
    fn new(m: &'static Manual, deadline: u64, id: u64) -> Registered {
        m.sleepers.lock().insert((deadline, id), ());
        m.changes.fetch_add(1, Ordering::AcqRel);
        Registered {
            m,
            key: (deadline, id),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.m.sleepers.lock().remove(&self.key);
        self.m.changes.fetch_add(1, Ordering::AcqRel);
    }
}

/// Move the manual clock forward by `ms`, deadline by deadline; returns the new time, or
/// `None` if the manual clock is off.
pub async fn advance(ms: u64) -> Option<u64> {
    let m = manual()?;
    let _one = m.advancing.lock().await;
    let target = m.now.load(Ordering::Acquire).saturating_add(ms);
    // Bounded: a timer that keeps re-arming at the current time cannot hold the call.
    for _ in 0..1_000_000 {
        let next = m.sleepers.lock().keys().next().map(|(d, _)| *d);
        match next {
            Some(d) if d <= target => {
                let now = m.now.load(Ordering::Acquire).max(d);
                m.now.store(now, Ordering::Release);
                m.moved.send_replace(now);
                settle(m, now).await;
            }
            _ => break,
        }
    }
    m.now.store(target, Ordering::Release);
    m.moved.send_replace(target);
    settle(m, target).await;
    Some(target)
}

/// Let the sleepers due at `now` wake and what they do settle: no sleeper due any more and
/// no registration for a few scheduler turns (at most a second of real time).
async fn settle(m: &Manual, now: u64) {
    let give_up = Instant::now() + Duration::from_secs(1);
    let mut quiet = 0;
    let mut seen = m.changes.load(Ordering::Acquire);
    while Instant::now() < give_up {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
        let due = m
            .sleepers
            .lock()
            .keys()
            .next()
            .is_some_and(|(d, _)| *d <= now);
        let changes = m.changes.load(Ordering::Acquire);
        if due || changes != seen {
            quiet = 0;
            seen = changes;
            continue;
        }
        quiet += 1;
        if quiet >= 5 {
            return;
        }
    }
}
