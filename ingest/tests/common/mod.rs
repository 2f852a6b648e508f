//! What the vote logs' suites share: votes to append, and the read-back check every
//! implementation of the log must pass.
#![allow(dead_code)]

use std::collections::HashSet;

use canopy_ingest::*;
use canopy_schemas::*;

/// Vote `n` of `voter` on `decision`, salted per voter; its option follows from `n`.
pub fn vote(decision: u128, voter: u128, n: u128) -> LoggedVote {
    let vote = Vote {
        vote_id: VoteId(n),
        decision_id: DecisionId(decision),
        voter_id: VoterId(voter),
        ballot: Ballot::single_choice((n % 3) as u16).unwrap(),
        component: Component::Democratic,
        weight: Weight::ONE,
        cast_at: 1_500,
    };
    // Sealed like a real voter's (random-looking, not zeros): the torn-tail tests cut the
    // entry's last bytes and must see them change.
    LoggedVote::new(vote, &VoterSalt([voter as u8; 32]))
        .with_sealed_voter(SealedVoter([(voter as u8) | 0x80; SEALED_VOTER_LEN]))
}

/// Every record of `partition`, from offset 0, in reads smaller than the log.
pub fn read_partition(log: &dyn VoteLog, partition: u32) -> Vec<LogRecord> {
    let mut out = Vec::new();
    loop {
        let batch = log.read_votes(partition, out.len() as u64, 50).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Appends `votes` to an empty `log` and checks that each lands in its decision's partition
/// and reads back at the position it was acknowledged at, offsets dense from 0, nothing
/// else stored. Returns the acknowledged positions.
pub fn append_and_read_back(log: &dyn VoteLog, votes: &[LoggedVote]) -> Vec<Position> {
    let partitions = log.partitions();
    let positions = log.append_votes(votes).unwrap();
    for (vote, position) in votes.iter().zip(&positions) {
        assert_eq!(
            position.partition,
            partition_for(vote.vote.decision_id, partitions)
        );
    }
    let mut seen = HashSet::new();
    for partition in 0..partitions {
        let records = read_partition(log, partition);
        assert_eq!(
            records.len() as u64,
            log.end_offset(partition).unwrap(),
            "every offset below the end is a vote"
        );
        for (offset, record) in records.iter().enumerate() {
            assert_eq!(
                record.position,
                Position {
                    partition,
                    offset: offset as u64
                }
            );
            let index = positions
                .iter()
                .position(|p| *p == record.position)
                .expect("a stored vote was acknowledged at its position");
            assert_eq!(record.logged(), votes[index]);
            seen.insert(record.position);
        }
    }
    assert_eq!(seen.len(), votes.len());
    positions
}
