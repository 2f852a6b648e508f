//! Issue 17, fuzz tests of the decoders `canopy verify` feeds with outside bytes: the
//! tlog-proof bundle, the signed checkpoint note and the verifier key. Each gets valid
//! inputs mutated byte by byte (flips, cuts, insertions) and arbitrary text. None may
//! panic, and a mutated input that still verifies must say exactly what the original said:
//! no edit of a bundle or a note makes a signature vouch for another leaf, size or root.

use canopy_chain::*;
use proptest::prelude::*;

/// Cases per target.
const CASES: u32 = 4096;

fn signer() -> NoteSigner {
    NoteSigner::from_seed("canopy.test", &[3u8; 32]).unwrap()
}

/// A bundle for leaf `index` of a log of `size` leaves, and the leaf's hash.
fn bundle(size: u8, index: u64) -> (ProofBundle, Hash) {
    let mut log = MerkleLog::new();
    for leaf in 0..size {
        log.append(&[leaf]);
    }
    let checkpoint = Checkpoint {
        origin: "canopy.test/decision/7".into(),
        size: log.size(),
        root: log.root(),
    };
    let bundle = ProofBundle {
        extra: Some(b"decision 7".to_vec()),
        index,
        proof: log.inclusion_proof(index, log.size()).unwrap(),
        checkpoint: checkpoint.sign(&signer()),
    };
    (bundle, log.leaf(index).unwrap())
}

#[derive(Clone, Debug)]
enum Edit {
    Flip { at: usize, bits: u8 },
    Cut { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Edit::Flip { at, bits }),
            (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Cut { at, len }),
            (
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..12)
            )
                .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        ],
        1..4,
    )
}

/// `text` with `edits` applied to its bytes, read back as text (lossily: the decoders take
/// `&str`, and `canopy verify` reads files and responses as UTF-8).
fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Flip { at, bits } => {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= bits;
                }
            }
            Edit::Cut { at, len: cut } => {
                let from = (at % len).min(bytes.len());
                let to = (from + cut).min(bytes.len());
                bytes.drain(from..to);
            }
            Edit::Insert {
                at,
                bytes: inserted,
            } => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, inserted.iter().copied());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// A mutated bundle either fails to parse or to verify, or it proves the same leaf at
    /// the same index under the same checkpoint.
    #[test]
    fn a_mutated_bundle_proves_nothing_new(size in 1u8..40, pick in any::<prop::sample::Index>(), edits in edits()) {
        let index = pick.index(usize::from(size)) as u64;
        let (original, leaf) = bundle(size, index);
        let text = mutate(&original.encode(), &edits);
        if let Ok(parsed) = ProofBundle::parse(&text)
            && let Ok(checkpoint) = parsed.verify(&leaf, &signer().verifier())
        {
            prop_assert_eq!(parsed.index, original.index);
            prop_assert_eq!(checkpoint.size, u64::from(size));
            prop_assert_eq!(parsed.proof, original.proof);
        }
    }

    /// Arbitrary text is refused with an error, never a panic.
    #[test]
    fn arbitrary_text_is_no_bundle(text in "(c2sp.org/tlog-proof@v1\n)?(extra [A-Za-z0-9+/=]{0,20}\n)?(index [0-9]{0,25}\n)?[ -~\n]{0,400}") {
        if let Ok(parsed) = ProofBundle::parse(&text) {
            let _ = parsed.verify(&leaf_hash(b"x"), &signer().verifier());
        }
    }

    /// A mutated checkpoint note verifies only as the checkpoint it was.
    #[test]
    fn a_mutated_note_vouches_for_nothing_new(size in 1u8..40, edits in edits()) {
        let (original, _) = bundle(size, 0);
        let note = mutate(&original.checkpoint, &edits);
        if let Ok(checkpoint) = Checkpoint::verify(&note, &signer().verifier()) {
            let signed = Checkpoint::verify(&original.checkpoint, &signer().verifier()).unwrap();
            prop_assert_eq!(checkpoint, signed);
        }
    }

    /// A mutated verifier key is refused, or it is the same key (the name and hash are
    /// checked against the key itself).
    #[test]
    fn a_mutated_verifier_key_is_refused_or_the_same(edits in edits()) {
        let encoded = signer().verifier().encode();
        let text = mutate(&encoded, &edits);
        if let Ok(key) = NoteVerifier::parse(&text) {
            prop_assert_eq!(key.encode(), encoded);
        }
    }

    #[test]
    fn arbitrary_text_is_no_note_and_no_key(text in "[ -~\n]{0,300}") {
        let _ = Checkpoint::verify(&text, &signer().verifier());
        let _ = NoteVerifier::parse(&text);
    }
}
