//! An append-only Merkle log in the form of RFC 6962 / RFC 9162 §2.1: SHA-256, leaves
//! hashed as H(0x00 ‖ data), interior nodes as H(0x01 ‖ left ‖ right), a tree of n leaves
//! split at the largest power of two below n.
//!
//! ```text
//! levels[0]:  h0  h1  h2  h3  h4      leaf hashes
//! levels[1]:  h01     h23             each complete, aligned pair
//! levels[2]:  h0123                   each complete, aligned block of four …
//! ```
//!
//! Keeping the hash of every complete aligned block makes any subtree the RFC's proofs ask
//! for a walk of O(log n) lookups, so roots at any past size, inclusion proofs and
//! consistency proofs are all logarithmic; appending costs one leaf hash plus amortised one
//! node hash.

use sha2::{Digest, Sha256};

use crate::ChainError;

pub type Hash = [u8; 32];

/// H(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    prefixed_sha256(0x00, data, &[])
}

/// H(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    prefixed_sha256(0x01, left, right)
}

/// SHA-256's initial state (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The longest message that fits two SHA-256 blocks with its padding.
const TWO_BLOCK_MESSAGE: usize = 128 - 1 - 8;

/// SHA-256(prefix ‖ a ‖ b). Every hash the record takes is one or two blocks long (a node is
/// 65 bytes, a vote leaf 81): for those the blocks are padded here and compressed directly,
/// which skips the streaming hasher's buffering and halves the cost per hash with SHA-NI
/// (measured with `canopy-bench merkle`). Longer messages take the streaming path.
fn prefixed_sha256(prefix: u8, a: &[u8], b: &[u8]) -> Hash {
    let len = 1 + a.len() + b.len();
    if len > TWO_BLOCK_MESSAGE {
        let mut hasher = Sha256::new();
        hasher.update([prefix]);
        hasher.update(a);
        hasher.update(b);
        return hasher.finalize().into();
    }
    let mut buffer = [0u8; 128];
    buffer[0] = prefix;
    buffer[1..1 + a.len()].copy_from_slice(a);
    buffer[1 + a.len()..len].copy_from_slice(b);
    buffer[len] = 0x80;
    let blocks = if len + 1 + 8 <= 64 { 1 } else { 2 };
    let end = blocks * 64;
    buffer[end - 8..end].copy_from_slice(&((len as u64) * 8).to_be_bytes());
    let mut state = SHA256_IV;
    let block = |at: usize| -> [u8; 64] { buffer[at..at + 64].try_into().expect("64 bytes") };
    if blocks == 1 {
        sha2::compress256(&mut state, &[block(0).into()]);
    } else {
        sha2::compress256(&mut state, &[block(0).into(), block(64).into()]);
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Hashes per chunk of a level: 512 KiB.
const CHUNK: usize = 1 << 14;

/// One level's hashes in fixed-size chunks: a growing level never reallocates, so each page
/// is faulted in once and nothing is copied (a doubling `Vec` faults and copies about twice
/// the final size; measured with `canopy-bench merkle`, the kernel's page clearing was a
/// third of the time).
#[derive(Clone, Debug, Default)]
struct Level {
    chunks: Vec<Vec<Hash>>,
    len: usize,
}

impl Level {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, hash: Hash) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[self.len / CHUNK].push(hash);
        self.len += 1;
    }

    fn get(&self, index: usize) -> Option<&Hash> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }
}

impl std::ops::Index<usize> for Level {
    type Output = Hash;

    fn index(&self, index: usize) -> &Hash {
        &self.chunks[index / CHUNK][index % CHUNK]
    }
}

#[derive(Clone, Debug, Default)]
pub struct MerkleLog {
    levels: Vec<Level>,
}

impl MerkleLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Appends a leaf given its data; returns its index.
    pub fn append(&mut self, data: &[u8]) -> u64 {
        self.append_hash(leaf_hash(data))
    }

    /// Appends a leaf given its leaf hash; returns its index.
    pub fn append_hash(&mut self, hash: Hash) -> u64 {
        let index = self.size();
        let mut carry = hash;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Level::default());
            }
            self.levels[level].push(carry);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            carry = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
        index
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The hash of the complete, aligned block of `2^level` leaves starting at leaf
    /// `index << level`, if the log has all of it: what a tile of the C2SP tlog-tiles
    /// layout holds (`level` 8L is the bottom row of the tiles at level L).
    pub fn stored_hash(&self, level: u32, index: u64) -> Option<Hash> {
        self.levels
            .get(usize::try_from(level).ok()?)?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root of the first `size` leaves: the current root, or any earlier one.
    pub fn root_at(&self, size: u64) -> Result<Hash, ChainError> {
        self.check_size(size)?;
        tree_root(self, size)
    }

    pub fn root(&self) -> Hash {
        self.root_at(self.size())
            .expect("the current size is valid")
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves
    /// (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ChainError> {
        self.check_size(size)?;
        inclusion_path(self, index, size)
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves
    /// (RFC 9162 §2.1.4.1). Empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ChainError> {
        self.check_size(new)?;
        consistency_path(self, old, new)
    }

    fn check_size(&self, size: u64) -> Result<(), ChainError> {
        if size > self.size() {
            return Err(ChainError::SizeBeyondLog {
                size,
                log: self.size(),
            });
        }
        Ok(())
    }
}

/// Where the proof algorithms below read the hash of a complete, aligned block of
/// `2^level` leaves (block `index` of its level): a `MerkleLog` in memory, or the tiles of
/// a log in a store (the tiles module). The callers only ask for blocks inside the tree they
/// were given.
pub(crate) trait StoredHashes {
    fn stored(&self, level: u32, index: u64) -> Result<Hash, ChainError>;
}

impl StoredHashes for MerkleLog {
    fn stored(&self, level: u32, index: u64) -> Result<Hash, ChainError> {
        Ok(self.levels[level as usize][index as usize])
    }
}

/// The root of the tree of the first `size` leaves.
pub(crate) fn tree_root(hashes: &impl StoredHashes, size: u64) -> Result<Hash, ChainError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree(hashes, 0, size)
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1).
pub(crate) fn inclusion_path(
    hashes: &impl StoredHashes,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ChainError> {
    if index >= size {
        return Err(ChainError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(hashes, index, 0, size, &mut proof)?;
    Ok(proof)
}

/// The consistency proof between the trees of `old` and `new` leaves (RFC 9162 §2.1.4.1).
pub(crate) fn consistency_path(
    hashes: &impl StoredHashes,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ChainError> {
    if old > new {
        return Err(ChainError::SizesOutOfOrder { old, new });
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(hashes, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

/// MTH of leaves [start, start + len), len ≥ 1.
fn subtree(hashes: &impl StoredHashes, start: u64, len: u64) -> Result<Hash, ChainError> {
    if len.is_power_of_two() && start.is_multiple_of(len) {
        return hashes.stored(len.trailing_zeros(), start / len);
    }
    let k = split_point(len);
    Ok(node_hash(
        &subtree(hashes, start, k)?,
        &subtree(hashes, start + k, len - k)?,
    ))
}

fn path(
    hashes: &impl StoredHashes,
    index: u64,
    start: u64,
    len: u64,
    proof: &mut Vec<Hash>,
) -> Result<(), ChainError> {
    if len == 1 {
        return Ok(());
    }
    let k = split_point(len);
    if index < k {
        path(hashes, index, start, k, proof)?;
        proof.push(subtree(hashes, start + k, len - k)?);
    } else {
        path(hashes, index - k, start + k, len - k, proof)?;
        proof.push(subtree(hashes, start, k)?);
    }
    Ok(())
}

fn subproof(
    hashes: &impl StoredHashes,
    old: u64,
    start: u64,
    len: u64,
    complete: bool,
    proof: &mut Vec<Hash>,
) -> Result<(), ChainError> {
    if old == len {
        if !complete {
            proof.push(subtree(hashes, start, len)?);
        }
        return Ok(());
    }
    let k = split_point(len);
    if old <= k {
        subproof(hashes, old, start, k, complete, proof)?;
        proof.push(subtree(hashes, start + k, len - k)?);
    } else {
        subproof(hashes, old - k, start + k, len - k, false, proof)?;
        proof.push(subtree(hashes, start, k)?);
    }
    Ok(())
}

/// Checks an audit path (RFC 9162 §2.1.3.2): that `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ChainError> {
    if root_from_inclusion(leaf, index, size, proof)? != *root {
        return Err(ChainError::BadProof(
            "the inclusion proof leads to another root",
        ));
    }
    Ok(())
}

/// The root an audit path leads to from `leaf` at `index` in a tree of `size` leaves, or an
/// error if the path has the wrong length for that place. The on-chain verifier computes
/// exactly this.
pub fn root_from_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ChainError> {
    if index >= size {
        return Err(ChainError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ChainError::BadProof("the inclusion proof is too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ChainError::BadProof("the inclusion proof is too short"));
    }
    Ok(r)
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): that the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ChainError> {
    if old > new {
        return Err(ChainError::SizesOutOfOrder { old, new });
    }
    if old == new {
        return match proof.is_empty() && old_root == new_root {
            true => Ok(()),
            false => Err(ChainError::BadProof(
                "equal sizes need equal roots and an empty proof",
            )),
        };
    }
    if old == 0 {
        return match proof.is_empty() {
            true => Ok(()),
            false => Err(ChainError::BadProof("the empty tree needs an empty proof")),
        };
    }
    if proof.is_empty() {
        return Err(ChainError::BadProof("the consistency proof is empty"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ChainError::BadProof("the consistency proof is too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ChainError::BadProof("the consistency proof is too short"));
    }
    if fr != *old_root || sr != *new_root {
        return Err(ChainError::BadProof(
            "the later tree does not extend the earlier one",
        ));
    }
    Ok(())
}
