//! Checking the audit trail: the hash chain, the HMACs under the audit key, and the heads
//! anchored with the vote record. The API checks each page it serves with it, and
//! `canopy verify --audit` a whole export.
//!
//! ```text
//!  entry n:  seq = n (a gap: missing) ─ prev_hash = hash of n-1 ─ hash recomputes (altered)
//!            ─ hmac verifies under the key (bad_hmac; absent once keying began: hmac_missing)
//!  anchors:  an anchored (seq, hash) is the entry at seq (not_as_anchored), and the trail
//!            reaches it (missing: the tail was cut)
//! ```
//!
//! Keying begins at the entry [`AUDIT_KEYING_BEGAN`] a keyed store writes first: entries
//! before it carry no HMAC and are reported as unkeyed (their chain is checked, and the
//! anchors cover them as any other), never as keyed. From it on an entry without an HMAC is
//! a fault, so stripping HMACs does not pass an entry off as old.

use canopy_chain::Hash;

use crate::store::{AUDIT_GENESIS, AUDIT_KEYING_BEGAN, AuditRecord};
use crate::store_keys::AuditKey;

/// What is wrong with the first bad entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrailFaultKind {
    /// The entry is not there: a gap in the sequence, or the trail ends before an anchored head.
    Missing,
    /// Its hash does not recompute from its fields, or it does not chain to the entry before.
    Altered,
    /// Its HMAC does not verify under the audit key: rewritten by someone without the key.
    BadHmac,
    /// It has no HMAC though keying began before it.
    HmacMissing,
    /// Its hash is not the one anchored for its sequence number.
    NotAsAnchored,
}

impl TrailFaultKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Altered => "altered",
            Self::BadHmac => "bad_hmac",
            Self::HmacMissing => "hmac_missing",
            Self::NotAsAnchored => "not_as_anchored",
        }
    }
}

/// The first bad entry, by sequence number.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TrailFault {
    pub seq: i64,
    pub kind: TrailFaultKind,
    pub message: String,
}

/// An anchored audit head, as the check takes it: entry `seq` had chain hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchoredHead {
    pub seq: i64,
    pub hash: Hash,
    /// Where it was anchored, for messages (`batch 3`).
    pub batch: String,
}

/// What checking a run of entries found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrailCheck {
    /// The first bad entry; none if the run is intact.
    pub first_bad: Option<TrailFault>,
    /// The sequence numbers checked, first and last.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Whether HMACs were checked (the checker had the audit key).
    pub hmac_checked: bool,
    /// The entry keying began at, if the run reaches it.
    pub keyed_from: Option<i64>,
    /// Entries before keying began (no HMAC), checked by the chain only.
    pub unkeyed: i64,
    /// Anchored heads the run was checked against.
    pub anchors_checked: usize,
}

impl TrailCheck {
    pub fn intact(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// The run of entries a check is given.
pub struct TrailRun<'a> {
    /// The entry before the first (none: the run starts at the trail's first entry).
    pub before: Option<&'a AuditRecord>,
    pub entries: &'a [AuditRecord],
    /// Whether the run ends where the trail ends: then an anchored head beyond it means
    /// entries were cut off.
    pub reaches_end: bool,
}

/// Checks that a whole trail, from its first entry, chains and recomputes (HMACs and anchors
/// left out); the first bad entry's message if not.
pub fn verify_audit_chain(entries: &[AuditRecord]) -> Result<(), String> {
    let run = TrailRun {
        before: None,
        entries,
        reaches_end: true,
    };
    match check_trail(&run, None, &[]).first_bad {
        Some(fault) => Err(fault.message),
        None => Ok(()),
    }
}

/// Checks `run` entry by entry against the chain, the HMACs (with `key`) and the
/// `anchored` heads; stops at the first bad entry.
pub fn check_trail(
    run: &TrailRun<'_>,
    key: Option<&AuditKey>,
    anchored: &[AnchoredHead],
) -> TrailCheck {
    let mut check = TrailCheck {
        hmac_checked: key.is_some(),
        first_seq: run.entries.first().map(|e| e.seq),
        last_seq: run.entries.last().map(|e| e.seq),
        ..TrailCheck::default()
    };
    let mut prev_hash = run
        .before
        .map_or(AUDIT_GENESIS, |entry| entry.hash.as_str());
    let mut expected_seq = run.before.map_or(1, |entry| entry.seq + 1);
    // A page that starts after a keyed entry starts keyed.
    let mut keyed = run.before.is_some_and(|entry| entry.hmac.is_some());
    for entry in run.entries {
        if let Some(fault) = entry_fault(entry, expected_seq, prev_hash, key, &mut keyed) {
            check.first_bad = Some(fault);
            return check;
        }
        if keyed {
            check.keyed_from.get_or_insert(entry.seq);
        } else {
            check.unkeyed += 1;
        }
        for head in anchored.iter().filter(|head| head.seq == entry.seq) {
            check.anchors_checked += 1;
            if hex::encode(head.hash) != entry.hash {
                check.first_bad = Some(TrailFault {
                    seq: entry.seq,
                    kind: TrailFaultKind::NotAsAnchored,
                    message: format!(
                        "entry {} is not the entry anchored in {}: the trail was rewritten up to it",
                        entry.seq, head.batch
                    ),
                });
                return check;
            }
        }
        prev_hash = &entry.hash;
        expected_seq = entry.seq + 1;
    }
    if run.reaches_end
        && let Some(head) = anchored
            .iter()
            .filter(|head| head.seq >= expected_seq)
            .max_by_key(|head| head.seq)
    {
        check.anchors_checked += 1;
        check.first_bad = Some(TrailFault {
            seq: expected_seq,
            kind: TrailFaultKind::Missing,
            message: format!(
                "entry {expected_seq} is missing: the trail ends at {}, but entry {} was anchored in {}",
                expected_seq - 1,
                head.seq,
                head.batch
            ),
        });
    }
    check
}

/// What is wrong with `entry`, expected at `expected_seq` after the hash `prev_hash`.
fn entry_fault(
    entry: &AuditRecord,
    expected_seq: i64,
    prev_hash: &str,
    key: Option<&AuditKey>,
    keyed: &mut bool,
) -> Option<TrailFault> {
    let fault = |kind, message: String| {
        Some(TrailFault {
            seq: entry.seq.min(expected_seq),
            kind,
            message,
        })
    };
    if entry.seq != expected_seq {
        return fault(
            TrailFaultKind::Missing,
            format!(
                "entry {expected_seq} is missing: entry {} follows entry {}",
                entry.seq,
                expected_seq - 1
            ),
        );
    }
    let recomputed = AuditRecord::compute_hash(
        &entry.prev_hash,
        entry.seq,
        entry.at,
        &entry.actor,
        &entry.action,
        &entry.detail,
    );
    if entry.prev_hash != prev_hash || recomputed != entry.hash {
        return fault(
            TrailFaultKind::Altered,
            format!("entry {} has been altered", entry.seq),
        );
    }
    let Some(key) = key else {
        *keyed |= entry.hmac.is_some();
        return None;
    };
    match &entry.hmac {
        Some(mac) if key.verifies(entry.seq, &entry.hash, mac) => {
            *keyed = true;
            None
        }
        Some(_) => fault(
            TrailFaultKind::BadHmac,
            format!(
                "entry {}'s HMAC does not verify under the audit key {}: it was written or rewritten without the key",
                entry.seq,
                key.id()
            ),
        ),
        None if *keyed => fault(
            TrailFaultKind::HmacMissing,
            format!(
                "entry {} has no HMAC, though keying began before it",
                entry.seq
            ),
        ),
        None if entry.action == AUDIT_KEYING_BEGAN => fault(
            TrailFaultKind::HmacMissing,
            format!("entry {} begins the keying but has no HMAC", entry.seq),
        ),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(key: Option<&AuditKey>, unkeyed: i64, keyed: i64) -> Vec<AuditRecord> {
        let mut entries: Vec<AuditRecord> = Vec::new();
        for seq in 1..=unkeyed + keyed {
            let prev = entries
                .last()
                .map_or(AUDIT_GENESIS.to_string(), |e| e.hash.clone());
            let action = if seq == unkeyed + 1 {
                AUDIT_KEYING_BEGAN
            } else {
                "login"
            };
            let hash = AuditRecord::compute_hash(&prev, seq, seq, "someone", action, "{}");
            let hmac = (seq > unkeyed).then(|| key.unwrap().entry_mac(seq, &hash));
            entries.push(AuditRecord {
                seq,
                at: seq,
                actor: "someone".into(),
                action: action.into(),
                detail: "{}".into(),
                prev_hash: prev,
                hash,
                hmac,
            });
        }
        entries
    }

    fn whole(entries: &[AuditRecord]) -> TrailRun<'_> {
        TrailRun {
            before: None,
            entries,
            reaches_end: true,
        }
    }

    /// The chain of `entries` recomputed from its first entry, as someone without the key
    /// would after deleting or changing rows; HMACs kept as they were.
    fn recompute(entries: &mut [AuditRecord]) {
        let mut prev = AUDIT_GENESIS.to_string();
        for (seq, entry) in (1..).zip(entries.iter_mut()) {
            entry.seq = seq;
            entry.prev_hash = prev;
            entry.hash = AuditRecord::compute_hash(
                &entry.prev_hash,
                seq,
                entry.at,
                &entry.actor,
                &entry.action,
                &entry.detail,
            );
            prev = entry.hash.clone();
        }
    }

    #[test]
    fn unkeyed_entries_before_the_keying_are_reported_as_such() {
        let key = AuditKey::from_bytes([3; 32]);
        let entries = trail(Some(&key), 3, 4);
        let check = check_trail(&whole(&entries), Some(&key), &[]);
        assert!(check.intact(), "{check:?}");
        assert_eq!((check.keyed_from, check.unkeyed), (Some(4), 3));
    }

    #[test]
    fn a_recomputed_chain_fails_its_hmac_at_the_first_rewritten_entry() {
        let key = AuditKey::from_bytes([3; 32]);
        let mut entries = trail(Some(&key), 0, 8);
        entries.remove(4);
        recompute(&mut entries);
        let without_key = check_trail(&whole(&entries), None, &[]);
        assert!(without_key.intact(), "only the key or an anchor shows it");
        let fault = check_trail(&whole(&entries), Some(&key), &[])
            .first_bad
            .unwrap();
        assert_eq!((fault.seq, fault.kind), (5, TrailFaultKind::BadHmac));
    }

    #[test]
    fn a_stripped_hmac_after_the_keying_is_a_fault() {
        let key = AuditKey::from_bytes([3; 32]);
        let mut entries = trail(Some(&key), 2, 4);
        entries[4].hmac = None;
        let fault = check_trail(&whole(&entries), Some(&key), &[])
            .first_bad
            .unwrap();
        assert_eq!((fault.seq, fault.kind), (5, TrailFaultKind::HmacMissing));
    }

    #[test]
    fn a_cut_tail_and_a_rewritten_anchored_entry_show_against_the_anchor() {
        let key = AuditKey::from_bytes([3; 32]);
        let entries = trail(Some(&key), 0, 6);
        let head = |seq: usize| AnchoredHead {
            seq: seq as i64,
            hash: hex::decode(&entries[seq - 1].hash)
                .unwrap()
                .try_into()
                .unwrap(),
            batch: "batch 0".into(),
        };
        let anchored = [head(6)];
        assert!(check_trail(&whole(&entries), None, &anchored).intact());
        let cut = check_trail(&whole(&entries[..4]), None, &anchored)
            .first_bad
            .unwrap();
        assert_eq!((cut.seq, cut.kind), (5, TrailFaultKind::Missing));

        let mut rewritten = entries.clone();
        rewritten[1].detail = "{\"n\":1}".into();
        recompute(&mut rewritten);
        let fault = check_trail(&whole(&rewritten), None, &anchored)
            .first_bad
            .unwrap();
        assert_eq!((fault.seq, fault.kind), (6, TrailFaultKind::NotAsAnchored));
    }
}
