//! Measurement state: a log-bucketed latency histogram (plain and atomic) and the bitsets the
//! verifier uses to track message ids.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Number of histogram buckets: values below 64 are exact, above that each power of two is
/// split into 32 sub-buckets (relative error under 3.2 %).
pub const BUCKETS: usize = 1920;

/// The bucket of a value.
#[inline]
pub fn bucket(v: u64) -> usize {
    if v < 64 {
        v as usize
    } else {
        let msb = 63 - v.leading_zeros();
        let shift = msb - 5;
        shift as usize * 32 + (v >> shift) as usize
    }
}

/// The lowest value of a bucket.
pub fn bucket_low(i: usize) -> u64 {
    if i < 64 {
        i as u64
    } else {
        let shift = (i / 32 - 1) as u32;
        ((i % 32 + 32) as u64) << shift
    }
}

/// The middle of a bucket (the value a percentile reports).
pub fn bucket_mid(i: usize) -> u64 {
    if i < 64 {
        i as u64
    } else {
        let shift = (i / 32 - 1) as u32;
        bucket_low(i) + ((1u64 << shift) >> 1)
    }
}

/// A single-threaded histogram with exact count, min and max.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    /// Number of recorded values.
    pub n: u64,
    /// Smallest recorded value (u64::MAX when empty).
    pub min: u64,
    /// Largest recorded value.
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            n: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    /// Record one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.n += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Add another histogram's values.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// The value at quantile `q` (0.0..=1.0), clamped to [min, max]; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_mid(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// A histogram one thread records into while another periodically takes its contents.
pub struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl AtomicHistogram {
    /// Record one value.
    #[inline]
    pub fn record(&self, v: u64) {
        self.counts[bucket(v)].fetch_add(1, Relaxed);
    }

    /// Move the recorded values into `into` (min/max are bucket bounds).
    pub fn drain_into(&self, into: &mut Histogram) {
        for (i, c) in self.counts.iter().enumerate() {
            if c.load(Relaxed) == 0 {
                continue;
            }
            let k = c.swap(0, Relaxed);
            if k > 0 {
                into.counts[i] += k;
                into.n += k;
                into.min = into.min.min(bucket_low(i));
                into.max = into.max.max(bucket_mid(i));
            }
        }
    }
}

/// A growable single-threaded bitset.
#[derive(Default, Clone)]
pub struct Bits {
    words: Vec<u64>,
}

impl Bits {
    /// Set bit `i`; returns whether it was already set.
    #[inline]
    pub fn set(&mut self, i: u64) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize((w + 1).max(self.words.len() * 2), 0);
        }
        let m = 1u64 << (i % 64);
        let was = self.words[w] & m != 0;
        self.words[w] |= m;
        was
    }

    /// Whether bit `i` is set.
    #[inline]
    pub fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Word `w` (bits 64w..64w+63), 0 beyond the end.
    pub fn word(&self, w: usize) -> u64 {
        self.words.get(w).copied().unwrap_or(0)
    }
}

/// Bits per chunk of an [`AtomicBits`] when the capacity is large.
const CHUNK_SHIFT: u32 = 20;

/// A fixed-capacity bitset shared by threads, allocated in chunks on first use.
pub struct AtomicBits {
    shift: u32,
    capacity: u64,
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl AtomicBits {
    /// A bitset for ids `0..capacity`.
    pub fn new(capacity: u64) -> AtomicBits {
        let capacity = capacity.max(64);
        let shift = if capacity <= 1 << CHUNK_SHIFT {
            64 - (capacity - 1).leading_zeros()
        } else {
            CHUNK_SHIFT
        };
        let n = capacity.div_ceil(1 << shift) as usize;
        AtomicBits {
            shift,
            capacity,
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// How many ids fit.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn chunk(&self, c: usize) -> &[AtomicU64] {
        self.chunks[c].get_or_init(|| {
            let words = (1usize << self.shift).div_ceil(64);
            (0..words).map(|_| AtomicU64::new(0)).collect()
        })
    }

    /// Set bit `i`; `Some(was_set)`, or `None` when `i` is beyond the capacity.
    #[inline]
    pub fn test_and_set(&self, i: u64) -> Option<bool> {
        if i >= self.capacity {
            return None;
        }
        let c = (i >> self.shift) as usize;
        let off = i & ((1u64 << self.shift) - 1);
        let m = 1u64 << (off % 64);
        let prev = self.chunk(c)[(off / 64) as usize].fetch_or(m, Relaxed);
        Some(prev & m != 0)
    }

    /// Word `w` (bits 64w..64w+63); 0 for chunks never touched or beyond the capacity.
    pub fn word(&self, w: usize) -> u64 {
        let bit = w as u64 * 64;
        if bit >= self.capacity {
            return 0;
        }
        let c = (bit >> self.shift) as usize;
        let off = bit & ((1u64 << self.shift) - 1);
        match self.chunks[c].get() {
            Some(words) => words[(off / 64) as usize].load(Relaxed),
            None => 0,
        }
    }

    /// Number of set bits at positions >= `from`.
    pub fn count_from(&self, from: u64) -> u64 {
        let mut n = 0;
        let words = self.capacity.div_ceil(64) as usize;
        let first = (from / 64) as usize;
        for w in first..words {
            let mut v = self.word(w);
            if w == first {
                v &= !0u64 << (from % 64);
            }
            n += v.count_ones() as u64;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contiguous() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS);
            assert!(bucket_low(b) <= v);
            last = b;
        }
        for i in 0..BUCKETS {
            assert_eq!(bucket(bucket_low(i)), i);
            assert_eq!(bucket(bucket_mid(i)), i);
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.04, "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.quantile(0.0), 1000);
    }

    #[test]
    fn atomic_bits() {
        let b = AtomicBits::new(3_000_000);
        assert_eq!(b.test_and_set(5), Some(false));
        assert_eq!(b.test_and_set(5), Some(true));
        assert_eq!(b.test_and_set(2_999_999), Some(false));
        assert_eq!(b.test_and_set(3_000_000), None);
        assert_eq!(b.count_from(0), 2);
        assert_eq!(b.count_from(6), 1);
        let small = AtomicBits::new(2000);
        assert_eq!(small.test_and_set(1999), Some(false));
        assert_eq!(small.word(1999 / 64), 1 << (1999 % 64));
    }
}
