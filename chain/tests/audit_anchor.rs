//! The audit trail's head in an anchor batch: an entry like a decision's under the reserved
//! id, written to the journal with its path, and checked against the signed batch root.

use canopy_chain::*;

fn decision_entry(n: u8) -> AnchorEntry {
    AnchorEntry {
        decision_id: [n; 16],
        tree_size: u64::from(n) * 10,
        root: [n; 32],
    }
}

#[tokio::test]
async fn the_audit_head_is_journaled_with_its_path_to_the_signed_root() {
    let head = AnchorEntry::audit_head(41, [0xaa; 32]);
    assert_eq!(head.encode()[16..32], *b"canopy/audit/v1/");
    assert!(head.is_audit_head() && !decision_entry(1).is_audit_head());
    let batch = AnchorBatch::new(vec![decision_entry(1), decision_entry(2), head]).unwrap();
    assert_eq!(batch.audit_head(), Some((2, &head)));
    assert_eq!(
        AnchorBatch::new(vec![decision_entry(1)])
            .unwrap()
            .audit_head(),
        None
    );

    let signer = NoteSigner::from_seed("canopy.test", &[5u8; 32]).unwrap();
    let note = Checkpoint {
        origin: batch_origin("canopy.test", 3),
        size: 3,
        root: batch.root(),
    }
    .sign(&signer);
    let dir = std::env::temp_dir().join(format!("canopy-journal-{}", std::process::id()));
    let path = dir.join("journal.jsonl");
    let journal = AnchorJournal::new(path.clone());
    journal.anchor(3, &batch, &note).await.unwrap();
    let plain = AnchorBatch::new(vec![decision_entry(4)]).unwrap();
    journal.anchor(4, &plain, "a note").await.unwrap();

    let anchors = AnchorJournal::audit_anchors(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(anchors.len(), 1, "only the batch holding the head");
    let anchor = &anchors[0];
    assert_eq!(
        (anchor.batch_id, anchor.seq, anchor.hash),
        (3, 41, [0xaa; 32])
    );
    let verifier = NoteVerifier::parse(&signer.verifier().encode()).unwrap();
    let signed = Checkpoint::verify(&anchor.note, &verifier).unwrap();
    let path = anchor.anchor_path(signed.size);
    verify_audit_anchor(41, &[0xaa; 32], &path, &signed.root).unwrap();
    assert!(verify_audit_anchor(40, &[0xaa; 32], &path, &signed.root).is_err());
    assert!(verify_audit_anchor(41, &[0xab; 32], &path, &signed.root).is_err());
}
