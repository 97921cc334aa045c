//! The RFC 9162 Merkle tree: leaf hash `SHA-256(0x00 || record line)`, node hash
//! `SHA-256(0x01 || left || right)` (tlog_tiles' `record_hash` / `node_hash`).
//!
//! Two shapes of the same tree:
//! - [`Frontier`]: the roots of the perfect subtrees on the right edge (at most 64
//!   hashes); enough to append and compute the current root. The writer and the
//!   streaming verifier use it, so memory does not grow with the log.
//! - [`HashStore`]: every stored hash in tlog's linear layout (about two per record),
//!   for producing inclusion and consistency proofs at any size (tlog_tiles'
//!   `prove_record` / `prove_tree` read it through `HashReader`).

use tlog_tiles::{Hash, HashReader};

/// A SHA-256 digest: a leaf hash, node hash or tree root.
pub type Digest = [u8; 32];

/// RFC 9162 leaf hash of one record line.
pub fn leaf_hash(line: &[u8]) -> Digest {
    tlog_tiles::record_hash(line).0
}

/// The root of the empty tree, `SHA-256("")`.
pub const EMPTY_ROOT: Digest = tlog_tiles::EMPTY_HASH.0;

/// The right edge of the tree: enough to append and to compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first; one per set bit of `size`.
    stack: Vec<Digest>,
}

impl Frontier {
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rebuilds a frontier from a segment header: one hash per set bit of `size`.
    pub fn from_parts(size: u64, stack: Vec<Digest>) -> Option<Frontier> {
        (stack.len() == size.count_ones() as usize).then_some(Frontier { size, stack })
    }

    /// The perfect-subtree roots, largest first.
    pub fn hashes(&self) -> &[Digest] {
        &self.stack
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Digest) {
        let mut h = Hash(leaf);
        let mut n = self.size;
        while n & 1 == 1 {
            // INVARIANT: one stack entry per set bit of `size`, so a set bit has one.
            let Some(left) = self.stack.pop() else { break };
            h = tlog_tiles::node_hash(Hash(left), h);
            n >>= 1;
        }
        self.stack.push(h.0);
        self.size += 1;
    }

    /// The RFC 9162 root (MTH) of the leaves pushed so far.
    pub fn root(&self) -> Digest {
        let mut it = self.stack.iter().rev();
        let Some(last) = it.next() else {
            return EMPTY_ROOT;
        };
        let mut h = Hash(*last);
        for left in it {
            h = tlog_tiles::node_hash(Hash(*left), h);
        }
        h.0
    }
}

/// Every stored hash of the tree (tlog layout), for proofs.
#[derive(Debug, Clone, Default)]
pub struct HashStore {
    size: u64,
    hashes: Vec<Hash>,
}

impl HashReader for HashStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl HashStore {
    pub fn new() -> Self {
        HashStore::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Digest) -> Result<(), tlog_tiles::Error> {
        let new = tlog_tiles::stored_hashes_for_record_hash(self.size, Hash(leaf), self)?;
        self.hashes.extend(new);
        self.size += 1;
        Ok(())
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Digest, tlog_tiles::Error> {
        if size > self.size {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        Ok(tlog_tiles::tree_hash(size, self)?.0)
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Digest> {
        let i = usize::try_from(tlog_tiles::stored_hash_index(0, index)).ok()?;
        (index < self.size).then(|| self.hashes.get(i).map(|h| h.0))?
    }

    /// Inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Digest>, tlog_tiles::Error> {
        if size > self.size {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        Ok(tlog_tiles::prove_record(size, index, self)?
            .into_iter()
            .map(|h| h.0)
            .collect())
    }

    /// Consistency proof from `old` leaves to `new` leaves.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Digest>, tlog_tiles::Error> {
        if new > self.size {
            return Err(tlog_tiles::Error::IndexesNotInTree);
        }
        Ok(tlog_tiles::prove_tree(new, old, self)?
            .into_iter()
            .map(|h| h.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frontier_root_matches_hash_store_at_every_size() {
        let mut f = Frontier::new();
        let mut s = HashStore::new();
        assert_eq!(f.root(), EMPTY_ROOT);
        for i in 0u32..130 {
            let leaf = leaf_hash(&i.to_be_bytes());
            f.push(leaf);
            s.push(leaf).unwrap();
            assert_eq!(
                f.root(),
                s.root(u64::from(i) + 1).unwrap(),
                "size {}",
                i + 1
            );
            assert_eq!(s.leaf(u64::from(i)), Some(leaf));
        }
    }
}
