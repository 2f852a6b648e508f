//! `canopy verify --tally STATEMENT --tiles STORE`: recounts a decision's final result from
//! its published leaves, trusting no server. The statement's signature is checked with the
//! record key; every entry bundle up to the statement's tree size is fetched from the record
//! store, the tree rebuilt from them must have the statement's size and root and end with
//! the decision's close leaf, the record's published checkpoint must be that same tree, and
//! a recount of the leaves (each voter's last leaf, by the statement's weights) must give
//! exactly the statement's tally and outcome.

use canopy_chain::Checkpoint;
use canopy_chain::tiles::read_entries;
use canopy_dataflow::{FinalResult, Outcome, recount_leaves};

use crate::verify::{
    Failure, TileFiles, VerifyArgs, fail, open_tiles, read_source, record_key, unreadable, verdict,
};

/// `canopy verify --tally STATEMENT --tiles STORE`.
pub fn run(args: VerifyArgs) -> std::process::ExitCode {
    let (Some(statement), Some(tiles)) = (&args.tally, &args.tiles) else {
        return unreadable("--tally needs --tiles: where the decision's leaves are");
    };
    let store = match open_tiles(tiles, args.s3_endpoint.as_deref()) {
        Ok(store) => store,
        Err(error) => return unreadable(error),
    };
    match read_statement(statement) {
        Ok(statement) => verdict(check_tally(&args, &statement, store.as_ref())),
        Err(error) => unreadable(error),
    }
}

/// The statement's text: the file or URL as given (GET /api/v1/audit/decisions/{id}/result),
/// or the `result.statement` field of a saved JSON answer (GET /api/v1/voting/decisions/{id}).
fn read_statement(source: &str) -> anyhow::Result<String> {
    let text = read_source(source)?;
    if !text.trim_start().starts_with('{') {
        return Ok(text);
    }
    let answer: serde_json::Value = serde_json::from_str(&text)?;
    match answer["result"]["statement"].as_str() {
        Some(statement) => Ok(statement.to_string()),
        None => anyhow::bail!(
            "{source} holds no `statement`: the decision has no final result yet (status {})",
            answer["status"]
        ),
    }
}

fn check_tally(
    args: &VerifyArgs,
    statement: &str,
    files: &dyn TileFiles,
) -> Result<String, Failure> {
    let chain_fail = |e: canopy_chain::ChainError| fail(e.code(), e.to_string());
    let unreachable = |e: anyhow::Error| fail("unreachable", e.to_string());
    let (verifier, key_source) = record_key(args, files)?;
    // The signature first, so that an altered statement fails as exactly that.
    canopy_chain::open_note(statement, &verifier).map_err(chain_fail)?;
    let result =
        FinalResult::open(statement, &verifier).map_err(|e| fail(e.code(), e.to_string()))?;
    let decision = result.decision.as_uuid();
    if let Some(asked) = args.decision
        && asked != decision
    {
        return Err(fail(
            "wrong_decision",
            format!("the statement is decision {decision}'s result, not {asked}'s"),
        ));
    }
    let entries = read_entries(result.tree_size, |bundle| {
        files
            .read(decision, &bundle.path())
            .map_err(|e| canopy_chain::ChainError::TileStore(e.to_string()))
    })
    .map_err(chain_fail)?;
    let recount = recount_leaves(
        result.decision,
        &result.params(),
        entries.iter().map(Vec::as_slice),
    )
    .map_err(|e| fail(e.code(), e.to_string()))?;
    if recount.tree_size != result.tree_size || hex::encode(recount.root) != result.root {
        return Err(fail(
            "root_mismatch",
            format!(
                "the leaves make a tree of size {} with root {}, the statement names size {} root {}",
                recount.tree_size,
                hex::encode(recount.root),
                result.tree_size,
                result.root
            ),
        ));
    }
    let Some(close) = recount.close else {
        return Err(fail(
            "no_close_leaf",
            "the tree does not end with the decision's close: more votes may still count",
        ));
    };
    if close.kind != result.close.kind {
        return Err(fail(
            "close_mismatch",
            format!(
                "the close leaf is a {} close, the statement says {}",
                close.kind.as_str(),
                result.close.kind.as_str()
            ),
        ));
    }
    // The record's own latest checkpoint must be this tree: nothing was appended after the
    // close, and the statement names a checkpoint the record really published.
    let note = files
        .read(decision, "checkpoint")
        .map_err(unreachable)?
        .ok_or_else(|| fail("not_checkpointed", "the store holds no checkpoint"))?;
    let note = String::from_utf8(note).map_err(|_| fail("bad_checkpoint", "not UTF-8"))?;
    let checkpoint = Checkpoint::verify(&note, &verifier).map_err(chain_fail)?;
    if checkpoint.size != result.tree_size || checkpoint.root != recount.root {
        return Err(fail(
            "checkpoint_mismatch",
            format!(
                "the record's checkpoint is size {}, not the statement's tree of size {}",
                checkpoint.size, result.tree_size
            ),
        ));
    }
    if recount.tally != result.tally {
        return Err(fail(
            "tally_mismatch",
            format!(
                "the leaves recount to {}, the statement says {}",
                summary(&recount.tally),
                summary(&result.tally)
            ),
        ));
    }
    if Outcome::of(&recount.tally) != result.outcome {
        return Err(fail(
            "outcome_mismatch",
            format!(
                "the recount's outcome is {:?}, the statement says {:?}",
                Outcome::of(&recount.tally),
                result.outcome
            ),
        ));
    }
    Ok(format!(
        "tally+signature ({key_source}) decision={decision} leaves={} voters={} outcome={}",
        result.tree_size,
        recount.tally.turnout,
        match &result.outcome {
            Outcome::Winner { option } => format!("winner:{option}"),
            Outcome::Tie { options } => format!(
                "tie:{}",
                options
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Outcome::NoVotes => "no_votes".to_string(),
        }
    ))
}

/// A tally in one line: each cell's option, component, count and weight.
fn summary(tally: &canopy_dataflow::Tally) -> String {
    let cells: Vec<String> = tally
        .cells
        .iter()
        .map(|cell| {
            format!(
                "{}/{}:{}x{}",
                cell.option, cell.component, cell.count, cell.weight_sum
            )
        })
        .collect();
    format!("[{}] turnout {}", cells.join(" "), tally.turnout)
}
