//! Image embeddings kept by content, so that an image is encoded once per process: the fixed
//! corruption images of sample-level CMRM and calibration (blank, seeded noise), and an image
//! that several conditions, requests or turns show again. Least recently used entries leave
//! first when the byte budget is reached.

use std::sync::Arc;

/// How often images were encoded and how often their embeddings were reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbeddingStats {
    /// Image chunks run through the projector.
    pub encoded: u64,
    /// Image chunks whose embeddings came from the cache.
    pub reused: u64,
}

/// A content key: SHA-256, so that requests of different clients, which share the cache,
/// cannot make one image's embeddings pass for another's.
pub type Key = [u8; 32];

/// A byte-bounded LRU cache of image-chunk embeddings keyed by content.
#[derive(Debug)]
pub struct EmbeddingCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: Vec<Entry>,
    stats: EmbeddingStats,
}

#[derive(Debug)]
struct Entry {
    key: Key,
    embd: Arc<Vec<f32>>,
    last_use: u64,
}

impl EmbeddingCache {
    /// A cache holding at most `budget` bytes of embeddings (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
            stats: EmbeddingStats::default(),
        }
    }

    /// The embeddings of `key`, when cached (counted as a reuse).
    pub fn get(&mut self, key: Key) -> Option<Arc<Vec<f32>>> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.iter_mut().find(|e| e.key == key)?;
        e.last_use = now;
        self.stats.reused += 1;
        Some(e.embd.clone())
    }

    /// Records a fresh encode of `key` and keeps its embeddings if they fit the budget,
    /// evicting the least recently used entries.
    pub fn insert(&mut self, key: Key, embd: Arc<Vec<f32>>) {
        self.stats.encoded += 1;
        let size = embd.len() * std::mem::size_of::<f32>();
        if size > self.budget || self.entries.iter().any(|e| e.key == key) {
            return;
        }
        while self.used + size > self.budget {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_use)
            else {
                break;
            };
            let gone = self.entries.swap_remove(oldest);
            self.used -= gone.embd.len() * std::mem::size_of::<f32>();
        }
        self.clock += 1;
        self.used += size;
        self.entries.push(Entry {
            key,
            embd,
            last_use: self.clock,
        });
    }

    /// Encodes and reuses so far.
    pub fn stats(&self) -> EmbeddingStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_entries_leave_first_and_counts_are_kept() {
        let e = |n: usize| Arc::new(vec![0.0f32; n]);
        let k = |i: u8| [i; 32];
        let mut c = EmbeddingCache::new(40); // ten floats
        c.insert(k(1), e(4));
        c.insert(k(2), e(4));
        assert!(c.get(k(1)).is_some());
        c.insert(k(3), e(4)); // evicts 2, the least recently used
        assert!(c.get(k(2)).is_none());
        assert!(c.get(k(1)).is_some() && c.get(k(3)).is_some());
        c.insert(k(4), e(11)); // larger than the budget: not kept
        assert!(c.get(k(4)).is_none());
        assert_eq!(
            c.stats(),
            EmbeddingStats {
                encoded: 4,
                reused: 3
            }
        );
        let mut off = EmbeddingCache::new(0);
        off.insert(k(1), e(1));
        assert!(off.get(k(1)).is_none());
    }
}
