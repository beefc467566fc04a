//! Replaying the message log at start: every segment is read in order through a bounded
//! window, each record's header is verified before its length is trusted, and damage is
//! stepped over by scanning forward to the next valid header, so one bad byte loses at most
//! the record it hit. Only bytes after the last valid record of the last segment (a write the
//! crash cut short, or garbage) are truncated.

use super::record::{self, HEADER, Record};
use super::writer::Accounting;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A recovered message of one queue: index data only (the body stays in the log).
#[derive(Debug, Clone, Copy)]
pub struct RecoveredMsg {
    /// Location of its publish record (its id).
    pub loc: u64,
    /// Queue order (the location of the original publish).
    pub order: u64,
    /// `expiration` property in ms (`u64::MAX`: none).
    pub expiration: u64,
    /// Body size.
    pub size: u32,
    /// Delivery count.
    pub count: u32,
    /// `priority` property.
    pub priority: u8,
    /// Delivered before the restart.
    pub delivered: bool,
    pub(super) removed: bool,
}

/// What a replay found.
pub(super) struct Scanned {
    pub acct: Accounting,
    pub queues: HashMap<String, Vec<RecoveredMsg>>,
    /// Damaged records or runs of damaged bytes stepped over.
    pub corrupt: usize,
    /// Length of the last segment after any torn tail was cut.
    pub last_len: u64,
}

/// How much of a segment is read at a time (a record larger than this is read on its own).
const WINDOW: usize = 4 << 20;

/// Sequential reads of one segment through a bounded buffer.
struct SegReader {
    f: File,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
}

impl SegReader {
    fn open(path: &Path) -> io::Result<SegReader> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        Ok(SegReader {
            f,
            len,
            buf: Vec::new(),
            base: 0,
        })
    }

    /// `n` bytes at `pos`, which the caller has checked lie inside the file.
    fn get(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        debug_assert!(pos + n as u64 <= self.len);
        let inside = pos >= self.base && pos + n as u64 <= self.base + self.buf.len() as u64;
        if !inside {
            let want = (n.max(WINDOW) as u64).min(self.len - pos) as usize;
            self.buf.clear();
            self.buf.resize(want, 0);
            self.f.read_exact_at(&mut self.buf, pos)?;
            self.base = pos;
            if self.buf.capacity() > 2 * WINDOW && want <= WINDOW {
                self.buf.shrink_to(WINDOW);
            }
        }
        let at = (pos - self.base) as usize;
        Ok(&self.buf[at..at + n])
    }

    /// The next position at or after `from` where a valid record header starts, if any.
    fn resync(&mut self, mut from: u64) -> io::Result<Option<u64>> {
        let magic = record::MAGIC.to_be_bytes();
        let flen = self.len;
        while from + HEADER as u64 <= flen {
            let n = ((flen - from) as usize).min(WINDOW);
            let chunk = self.get(from, n)?;
            let mut i = 0;
            while i + HEADER <= chunk.len() {
                match chunk[i..].windows(4).position(|w| w == magic) {
                    Some(k) if i + k + HEADER <= chunk.len() => {
                        let at = i + k;
                        if record::parse_header(&chunk[at..at + HEADER]).is_some_and(|(len, _)| {
                            from + (at + HEADER) as u64 + len as u64 <= flen
                        }) {
                            return Ok(Some(from + at as u64));
                        }
                        i = at + 1;
                    }
                    _ => break,
                }
            }
            // Keep the last HEADER-1 bytes: a header may straddle the window's end.
            let step = chunk.len().saturating_sub(HEADER - 1).max(1);
            from += step as u64;
        }
        Ok(None)
    }
}

/// Whether a segment looks like format 1 (an earlier Warren: `len u32 | crc32 u32 |
/// payload`, no magic), judged by its first record.
fn is_format_1(r: &mut SegReader) -> io::Result<bool> {
    if r.len < 9 {
        return Ok(false);
    }
    let h = r.get(0, 8)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || 8 + len > r.len {
        return Ok(false);
    }
    let p = r.get(8, len as usize)?;
    Ok(crc32fast::hash(p) == crc && matches!(p[0], 1..=5))
}

/// Replay `segments` (in order) of the log in `dir`. Messages of queues for which `known` is
/// false are dropped.
pub(super) fn scan(
    dir: &Path,
    segments: &[u64],
    known: &dyn Fn(&str) -> bool,
) -> io::Result<Scanned> {
    let mut acct = Accounting::default();
    let mut queues: HashMap<String, Vec<RecoveredMsg>> = HashMap::new();
    let mut corrupt = 0;
    let mut last_len = 0u64;
    let find = |v: &mut Vec<RecoveredMsg>, loc: u64| -> Option<usize> {
        v.binary_search_by_key(&loc, |m| m.loc)
            .ok()
            .filter(|&i| !v[i].removed)
    };
    for &seg in segments {
        let path = super::log::segment_path(dir, seg);
        let mut r = SegReader::open(&path)?;
        let mut pos = 0u64;
        // End of the last valid record: a torn tail of the last segment is cut there.
        let mut good_end = 0u64;
        let mut valid = 0usize;
        while pos + HEADER as u64 <= r.len {
            if let Some(skip) = record::parse_skip(r.get(pos, HEADER)?) {
                // Records left out (their messages were consumed first): a hole to step over.
                let end = pos + HEADER as u64 + skip as u64;
                if end > r.len {
                    // The file ends inside it: nothing was written after it (a later record
                    // lies past its end). The last segment is cut at the skip header.
                    break;
                }
                valid += 1;
                pos = end;
                good_end = pos;
                continue;
            }
            let hdr = record::parse_header(r.get(pos, HEADER)?)
                .filter(|(len, _)| pos + HEADER as u64 + *len as u64 <= r.len);
            let Some((len, crc)) = hdr else {
                // Damage (or a record cut short): step to the next valid header.
                corrupt += 1;
                match r.resync(pos + 1)? {
                    Some(next) => {
                        pos = next;
                        continue;
                    }
                    None => break,
                }
            };
            let loc = seg << 32 | pos;
            let payload = r.get(pos + HEADER as u64, len as usize)?;
            pos += HEADER as u64 + len as u64;
            good_end = pos;
            if crc32fast::hash(payload) != crc {
                corrupt += 1;
                continue;
            }
            let Some(rec) = record::decode(payload) else {
                corrupt += 1;
                continue;
            };
            valid += 1;
            apply(seg, loc, rec, &mut acct, &mut queues, known, &find);
        }
        if valid == 0 && is_format_1(&mut r)? {
            return Err(io::Error::other(format!(
                "{}: this message log was written by an earlier Warren (record format 1); \
                 drain it with that version, or move the msgs directory away to start without it",
                path.display()
            )));
        }
        if seg == *segments.last().unwrap_or(&0) {
            last_len = good_end;
            if good_end < r.len {
                // Cut the torn tail so new records follow intact ones.
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(good_end)?;
            }
        }
    }
    for v in queues.values_mut() {
        v.retain(|m| !m.removed);
        v.shrink_to_fit();
        for m in v.iter() {
            acct.add(super::log::segment_of(m.loc), 0, 1);
        }
        if v.iter().any(|m| m.order != m.loc) {
            v.sort_by_key(|m| m.order);
        }
    }
    Ok(Scanned {
        acct,
        queues,
        corrupt,
        last_len,
    })
}

fn apply(
    seg: u64,
    loc: u64,
    rec: Record<'_>,
    acct: &mut Accounting,
    queues: &mut HashMap<String, Vec<RecoveredMsg>>,
    known: &dyn Fn(&str) -> bool,
    find: &dyn Fn(&mut Vec<RecoveredMsg>, u64) -> Option<usize>,
) {
    match rec {
        Record::Publish(p) => {
            let peek = crate::message::peek_properties(p.properties);
            let (priority, expiration) = (peek.priority, peek.expiration());
            acct.add(seg, p.queues.len() as u64, 0);
            for (q, delivered, count) in p.queues {
                let q = String::from_utf8_lossy(q);
                if !known(&q) {
                    continue;
                }
                let v = match queues.get_mut(&*q) {
                    Some(v) => v,
                    None => queues.entry(q.into_owned()).or_default(),
                };
                if p.from != 0
                    && let Some(i) = find(v, p.from)
                {
                    v[i].removed = true;
                }
                // Records are read in location order, so each queue's list stays sorted.
                if v.last().is_some_and(|m| m.loc >= loc) {
                    continue;
                }
                v.push(RecoveredMsg {
                    loc,
                    order: if p.order == 0 { loc } else { p.order },
                    expiration: expiration.unwrap_or(u64::MAX),
                    size: p.body.len() as u32,
                    count,
                    priority,
                    delivered,
                    removed: false,
                });
            }
        }
        // Spooled messages are dead after a restart; they count in their segment's total.
        Record::Spool(_) => acct.add(seg, 1, 0),
        Record::Remove(at, q) => {
            if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(q))
                && let Some(i) = find(v, at)
            {
                v[i].removed = true;
            }
        }
        Record::Delivered(at, q) => {
            if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(q))
                && let Some(i) = find(v, at)
            {
                v[i].delivered = true;
            }
        }
        Record::Count(at, q, n) => {
            if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(q))
                && let Some(i) = find(v, at)
            {
                v[i].count = n;
            }
        }
        Record::QueueDeleted(q) => {
            if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(q)) {
                v.clear();
            }
        }
    }
}
