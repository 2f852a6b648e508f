//! The Merkle log against the RFC's reference data, a second implementation (ct-merkle),
//! and properties over random logs.

use canopy_chain::*;
use proptest::prelude::*;

fn hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// The leaves of the certificate-transparency reference tests (RFC 6962's reference
/// implementation), and the roots of their first 1..=8 leaves.
const REFERENCE_LEAVES: [&[u8]; 8] = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
];
const REFERENCE_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn roots_match_the_reference_tree() {
    let mut log = MerkleLog::new();
    assert_eq!(
        hex(&log.root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    for (leaf, root) in REFERENCE_LEAVES.iter().zip(REFERENCE_ROOTS) {
        log.append(leaf);
        assert_eq!(hex(&log.root()), root, "size {}", log.size());
    }
    // Every past root is still available, and proofs between them verify.
    for (size, root) in (1..=8).zip(REFERENCE_ROOTS) {
        assert_eq!(hex(&log.root_at(size).unwrap()), root);
        let proof = log.consistency_proof(size, 8).unwrap();
        verify_consistency(size, 8, &log.root_at(size).unwrap(), &log.root(), &proof).unwrap();
    }
}

fn ct_tree(leaves: &[Vec<u8>]) -> ct_merkle::CtMerkleTree<sha2::Sha256, Vec<u8>> {
    let mut tree = ct_merkle::CtMerkleTree::new();
    for leaf in leaves {
        tree.push(leaf.clone());
    }
    tree
}

fn leaves() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Same roots and the same proof bytes as an independent RFC 6962 implementation.
    #[test]
    fn agrees_with_a_second_implementation(leaves in leaves(), pick in any::<prop::sample::Index>(), old in any::<prop::sample::Index>()) {
        let mut log = MerkleLog::new();
        for leaf in &leaves {
            log.append(leaf);
        }
        let tree = ct_tree(&leaves);
        let theirs = tree.root();
        prop_assert_eq!(&log.root()[..], &theirs.as_bytes()[..]);
        let index = pick.index(leaves.len());
        let ours: Vec<u8> = log.inclusion_proof(index as u64, log.size()).unwrap().concat();
        prop_assert_eq!(ours, tree.prove_inclusion(index).as_bytes().to_vec());
        let old = 1 + old.index(leaves.len());
        let ours: Vec<u8> = log.consistency_proof(old as u64, log.size()).unwrap().concat();
        prop_assert_eq!(ours, tree.prove_consistency(old).as_bytes().to_vec());
    }

    /// Every inclusion proof verifies; changing any hash of it, the leaf, the index or the
    /// root makes it fail.
    #[test]
    fn inclusion_proofs_verify_and_tampering_fails(leaves in leaves(), pick in any::<prop::sample::Index>(), size in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        let mut log = MerkleLog::new();
        for leaf in &leaves {
            log.append(leaf);
        }
        let size = 1 + size.index(leaves.len()) as u64;
        let index = pick.index(size as usize) as u64;
        let root = log.root_at(size).unwrap();
        let leaf = leaf_hash(&leaves[index as usize]);
        let proof = log.inclusion_proof(index, size).unwrap();
        verify_inclusion(&leaf, index, size, &proof, &root).unwrap();

        let other_leaf = leaf_hash(b"a vote that was never cast");
        prop_assert!(verify_inclusion(&other_leaf, index, size, &proof, &root).is_err());
        if !proof.is_empty() {
            let mut tampered = proof.clone();
            tampered[flip.index(proof.len())][0] ^= 1;
            prop_assert!(verify_inclusion(&leaf, index, size, &tampered, &root).is_err());
            prop_assert!(verify_inclusion(&leaf, index, size, &proof[..proof.len() - 1], &root).is_err());
        }
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
        if size > 1 {
            let wrong_index = (index + 1) % size;
            if leaves[wrong_index as usize] != leaves[index as usize] {
                prop_assert!(verify_inclusion(&leaf, wrong_index, size, &proof, &root).is_err());
            }
        }
        let mut wrong_root = root;
        wrong_root[31] ^= 1;
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &wrong_root).is_err());
    }

    /// Consistency proofs between any two sizes verify, and fail when the later tree
    /// rewrote an earlier leaf.
    #[test]
    fn consistency_proofs_verify_and_rewritten_history_fails(leaves in leaves(), a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(), rewrite in any::<prop::sample::Index>()) {
        let mut log = MerkleLog::new();
        for leaf in &leaves {
            log.append(leaf);
        }
        let (x, y) = (a.index(leaves.len() + 1) as u64, b.index(leaves.len() + 1) as u64);
        let (old, new) = (x.min(y), x.max(y));
        let proof = log.consistency_proof(old, new).unwrap();
        let (old_root, new_root) = (log.root_at(old).unwrap(), log.root_at(new).unwrap());
        verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();

        if old > 0 && old < new {
            // A log that changed one of the first `old` leaves and then grew to `new`.
            let mut forged = MerkleLog::new();
            let changed = rewrite.index(old as usize);
            for (i, leaf) in leaves.iter().take(new as usize).enumerate() {
                if i == changed {
                    forged.append(b"rewritten");
                } else {
                    forged.append(leaf);
                }
            }
            if forged.root_at(old).unwrap() != old_root {
                let forged_proof = forged.consistency_proof(old, new).unwrap();
                prop_assert!(verify_consistency(old, new, &old_root, &forged.root(), &forged_proof).is_err());
            }
            let mut tampered = proof.clone();
            tampered[0][0] ^= 1;
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &tampered).is_err());
        }
    }
}

#[test]
fn out_of_range_requests_are_errors() {
    let mut log = MerkleLog::new();
    log.append(b"a");
    assert_eq!(
        log.inclusion_proof(1, 1).unwrap_err().code(),
        "index_out_of_range"
    );
    assert_eq!(log.root_at(2).unwrap_err().code(), "size_beyond_log");
    assert_eq!(
        log.consistency_proof(2, 1).unwrap_err().code(),
        "sizes_out_of_order"
    );
}

/// Leaf and node hashes take a two-block shortcut for short messages: they must equal
/// SHA-256 of the prefixed bytes at every length, across the one/two/streaming boundaries.
#[test]
fn leaf_and_node_hashes_equal_plain_sha256_at_every_length() {
    use sha2::Digest;
    for len in 0..=300usize {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        let mut prefixed = vec![0x00];
        prefixed.extend_from_slice(&data);
        let expected: Hash = sha2::Sha256::digest(&prefixed).into();
        assert_eq!(leaf_hash(&data), expected, "leaf of {len} bytes");
    }
    let (left, right) = ([7u8; 32], [200u8; 32]);
    let mut prefixed = vec![0x01];
    prefixed.extend_from_slice(&left);
    prefixed.extend_from_slice(&right);
    let expected: Hash = sha2::Sha256::digest(&prefixed).into();
    assert_eq!(node_hash(&left, &right), expected);
}
