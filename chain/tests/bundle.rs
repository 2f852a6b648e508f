use canopy_chain::*;
use proptest::prelude::*;

fn signer() -> NoteSigner {
    NoteSigner::from_seed("canopy.test", &[3u8; 32]).unwrap()
}

fn bundle_for(leaves: &[Vec<u8>], index: u64) -> (ProofBundle, Hash) {
    let mut log = MerkleLog::new();
    for leaf in leaves {
        log.append(leaf);
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

proptest! {
    /// A bundle survives its text form and verifies offline; a bundle for another leaf, a
    /// moved index or a checkpoint signed by someone else does not.
    #[test]
    fn bundles_round_trip_and_verify(leaves in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 1..50), pick in any::<prop::sample::Index>()) {
        let index = pick.index(leaves.len()) as u64;
        let (bundle, leaf) = bundle_for(&leaves, index);
        let text = bundle.encode();
        let parsed = ProofBundle::parse(&text).unwrap();
        prop_assert_eq!(&parsed, &bundle);
        let checkpoint = parsed.verify(&leaf, &signer().verifier()).unwrap();
        prop_assert_eq!(checkpoint.size, leaves.len() as u64);

        prop_assert!(parsed.verify(&leaf_hash(b"not a vote in this log"), &signer().verifier()).is_err());
        if leaves.len() > 1 && leaves[((index + 1) % leaves.len() as u64) as usize] != leaves[index as usize] {
            let moved = ProofBundle { index: (index + 1) % leaves.len() as u64, ..parsed.clone() };
            prop_assert!(moved.verify(&leaf, &signer().verifier()).is_err());
        }
        let stranger = NoteSigner::from_seed("canopy.test", &[4u8; 32]).unwrap();
        prop_assert_eq!(parsed.verify(&leaf, &stranger.verifier()).unwrap_err(), ChainError::BadSignature);
    }
}

#[test]
fn the_text_form_is_the_c2sp_one() {
    let leaves: Vec<Vec<u8>> = (0u8..5).map(|n| vec![n]).collect();
    let (bundle, _) = bundle_for(&leaves, 2);
    let text = bundle.encode();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("c2sp.org/tlog-proof@v1"));
    assert_eq!(lines.next(), Some("extra ZGVjaXNpb24gNw=="));
    assert_eq!(lines.next(), Some("index 2"));
    assert!(text.contains("\n\ncanopy.test/decision/7\n5\n"), "{text}");
    let without_extra = ProofBundle {
        extra: None,
        ..bundle
    };
    assert_eq!(
        ProofBundle::parse(&without_extra.encode()).unwrap(),
        without_extra
    );
    for broken in [
        "",
        "c2sp.org/tlog-proof@v2\nindex 1\n\nx",
        "c2sp.org/tlog-proof@v1\nindex x\n\nx",
        "c2sp.org/tlog-proof@v1\nindex 1\nnot-base64!\n\nx",
    ] {
        assert_eq!(
            ProofBundle::parse(broken).unwrap_err().code(),
            "bad_bundle",
            "{broken:?}"
        );
    }
}
