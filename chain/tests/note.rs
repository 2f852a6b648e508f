use canopy_chain::*;

fn signer() -> NoteSigner {
    NoteSigner::from_seed("canopy.test", &[7u8; 32]).unwrap()
}

fn checkpoint() -> Checkpoint {
    let mut log = MerkleLog::new();
    for vote in [b"one", b"two", b"six"] {
        log.append(vote);
    }
    Checkpoint {
        origin: "canopy.test/decision/42".into(),
        size: log.size(),
        root: log.root(),
    }
}

#[test]
fn a_signed_checkpoint_verifies_and_round_trips() {
    let note = checkpoint().sign(&signer());
    assert!(note.starts_with("canopy.test/decision/42\n3\n"), "{note}");
    assert!(note.contains("\n\n\u{2014} canopy.test "), "{note}");
    let verifier = NoteVerifier::parse(&signer().verifier().encode()).unwrap();
    assert_eq!(Checkpoint::verify(&note, &verifier).unwrap(), checkpoint());
}

#[test]
fn altered_or_foreign_checkpoints_are_refused() {
    let note = checkpoint().sign(&signer());
    let verifier = signer().verifier();
    let grown = note.replacen("\n3\n", "\n4\n", 1);
    assert_eq!(
        Checkpoint::verify(&grown, &verifier).unwrap_err(),
        ChainError::BadSignature
    );
    let other = NoteSigner::from_seed("canopy.test", &[8u8; 32]).unwrap();
    assert_eq!(
        Checkpoint::verify(&note, &other.verifier()).unwrap_err(),
        ChainError::BadSignature
    );
    // A cosignature by another key is allowed beside ours.
    let cosigned = format!(
        "{note}{}",
        checkpoint()
            .sign(&NoteSigner::from_seed("witness", &[9u8; 32]).unwrap())
            .split("\n\n")
            .nth(1)
            .unwrap()
    );
    assert_eq!(
        Checkpoint::verify(&cosigned, &verifier).unwrap(),
        checkpoint()
    );
    assert_eq!(
        Checkpoint::verify("no body", &verifier).unwrap_err().code(),
        "bad_checkpoint"
    );
}

#[test]
fn verifier_keys_are_checked() {
    let encoded = signer().verifier().encode();
    assert!(encoded.starts_with("canopy.test+"));
    let mut tampered = encoded.clone();
    tampered.replace_range(12..14, "00");
    assert_eq!(
        NoteVerifier::parse(&tampered).unwrap_err().code(),
        "bad_key"
    );
    assert!(NoteSigner::from_seed("bad name", &[1; 32]).is_err());
}
