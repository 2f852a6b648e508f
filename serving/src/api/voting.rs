//! Voting: decisions, casting (alone or relayed in batches) and results.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use canopy_dataflow::{DecisionView, Outcome};
use canopy_ingest::{IngestError, Position};
use canopy_schemas::clock::{now_micros, unix_now};
use canopy_schemas::{
    Ballot, CloseKind, Component, ComponentWeights, Decision, DecisionClose, DecisionId,
    DecisionStatus, Electorate, LeafVersion, LoggedVote, MAX_DESCRIPTION_LEN, Method, SchemaError,
    Vote, VoteId, VoteLogEntry, VoterCommitment, VoterId, VoterSalt, Weight, validate_decision,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::extract::{ApiJson, Caller, ErrorBody};
use crate::ServingError;
use crate::auth::{Action, Claims, Role};
use crate::receipts::PendingConfirmation;
use crate::salts::seal_voter;
use crate::state::SharedState;
use crate::store::{CheckpointRow, DecisionCloseRow, DecisionSearch, StoredDecision};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    title: String,
    /// What is being decided, in words (at most 10000 bytes); searched with the title.
    #[serde(default)]
    description: String,
    #[serde(default)]
    region: String,
    options: Vec<String>,
    /// Microseconds since the Unix epoch; now if absent.
    #[serde(default)]
    opens_at: Option<i64>,
    closes_at: i64,
    /// Millionths per component (democratic, expert, community, environmental); sum 1000000.
    #[serde(default)]
    #[schema(value_type = Option<Vec<u32>>)]
    weights: Option<ComponentWeights>,
    #[serde(default)]
    quorum: u64,
    /// `single_choice` (the default), `approval`, `ranked_choice` or `quadratic`; fixed.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "single_choice")]
    method: Method,
    /// Quadratic only: the credits each voter may spend (1 to 10000), n votes on one option
    /// costing n².
    #[serde(default)]
    credits: u32,
    /// Who may vote: `{"roles": ["citizen", "expert", "stakeholder", "analysis_agent"],
    /// "regions": ["north"], "roll": "<roll id>"}`, each absent for no restriction.
    /// Stakeholders vote only on decisions of a region they are verified for. With a roll,
    /// only accounts holding one of its entries vote, in the entry's region.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    electorate: Electorate,
    /// What each option would do if adopted: the proposal the analysis agents assess.
    #[serde(default)]
    impact_statement: Option<canopy_agents::ImpactStatement>,
}

#[utoipa::path(post, path = "/api/v1/voting/decision/create", tag = "voting", request_body = DecisionBody, security(("bearer" = [])), responses((status = 201, description = "the decision, with its id"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_decision(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::CreateDecision).await?;
    if body.description.len() > MAX_DESCRIPTION_LEN {
        return Err(ServingError::BadRequest(format!(
            "a description is at most {MAX_DESCRIPTION_LEN} bytes"
        )));
    }
    if let Some(roll) = body.electorate.roll
        && state.store.roll_summary(roll.as_uuid()).await?.is_none()
    {
        return Err(SchemaError::Electorate("no roll has that id").into());
    }
    if let Some(statement) = &body.impact_statement {
        statement.validate(body.options.len())?;
    }
    let now = now_micros();
    let decision = Decision {
        electorate: body.electorate,
        credits: body.credits,
        id: DecisionId::new_random(),
        title: body.title,
        description: body.description,
        region: body.region,
        options: body.options,
        opens_at: body.opens_at.unwrap_or(now),
        closes_at: body.closes_at,
        weights: body.weights.unwrap_or_default(),
        quorum: body.quorum,
        method: body.method,
    };
    state.gate.register(decision.clone(), now)?;
    state
        .store
        .put_decision(&decision, caller.0.sub, unix_now() as i64)
        .await?;
    if let Some(statement) = &body.impact_statement {
        let json =
            serde_json::to_string(statement).map_err(|e| ServingError::Internal(e.to_string()))?;
        state
            .store
            .put_impact_statement(decision.id, &json, now)
            .await?;
    }
    if let Some(engine) = &state.engine {
        engine.register(decision.clone());
    }
    state
        .audit_as_user(
            caller.0.sub,
            "create_decision",
            json!({ "decision_id": decision.id, "title": decision.title }),
        )
        .await;
    let window = json!({ "opens_at": decision.opens_at, "closes_at": decision.closes_at });
    record_history(&state, decision.id, "created", now, caller.0.sub, window).await;
    Ok((StatusCode::CREATED, Json(decision)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CastBody {
    /// The idempotency key; generated if absent.
    #[serde(default)]
    vote_id: Option<Uuid>,
    decision_id: Uuid,
    /// The ballot, exactly one of these four, by the decision's method. Single choice: the
    /// option's index.
    #[serde(default)]
    option: Option<u16>,
    /// Approval: the approved options, at least one.
    #[serde(default)]
    approve: Option<Vec<u16>>,
    /// Ranked choice: options most preferred first, 1 to 31, each once.
    #[serde(default)]
    ranking: Option<Vec<u16>>,
    /// Quadratic: `[option, votes]` pairs, 1 to 15 options, costing Σ votes² credits.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Vec<u16>>>)]
    allocation: Option<Vec<(u16, u16)>>,
}

impl CastBody {
    /// The ballot the body marks: exactly one of its four forms (`invalid_ballot` else).
    fn ballot(&self) -> Result<Ballot, SchemaError> {
        match (&self.option, &self.approve, &self.ranking, &self.allocation) {
            (Some(option), None, None, None) => Ballot::single_choice(*option),
            (None, Some(options), None, None) => Ballot::approval(options),
            (None, None, Some(ranking), None) => Ballot::ranked_choice(ranking),
            (None, None, None, Some(votes)) => Ballot::quadratic(votes),
            _ => Err(SchemaError::InvalidBallot(
                "a vote gives exactly one of option, approve, ranking or allocation".into(),
            )),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CastReceipt {
    #[schema(value_type = uuid::Uuid)]
    vote_id: VoteId,
    #[schema(value_type = uuid::Uuid)]
    decision_id: DecisionId,
    /// {"partition": …, "offset": …}: pass the offset as min_offset to read your own vote.
    #[schema(value_type = Object)]
    position: Position,
    /// The vote's Merkle leaf hash (hex): SHA-256(0x00 ‖ leaf encoding), where the leaf
    /// encoding is the vote with the voter replaced by a salted commitment. Ask
    /// /api/v1/audit/decisions/{decision_id}/proof?leaf=… for its inclusion proof once a
    /// checkpoint covers it.
    leaf_hash: String,
    /// The leaf encoding (hex): the vote as the record holds it, the voter replaced by the
    /// salted commitment (layout in canopy-schemas' record module).
    leaf: String,
}

/// The caller's vote (the `index`th of a batch), once the decision's electorate admits
/// them: their role, the entry of the decision's roll they hold, and the regions they are
/// verified for (the entry's, with a roll) when the decision asks for any (refused
/// `not_eligible`). The vote's voter is the ballot's subject: the account, or with a roll
/// the entry, so that an entry casts one ballot whoever holds it.
async fn eligible_vote(
    state: &SharedState,
    claims: &Claims,
    body: &CastBody,
    index: usize,
) -> Result<LoggedVote, ServingError> {
    let voter_role = claims.role.voter_role().ok_or(ServingError::Forbidden {
        role: claims.role.as_str(),
        action: Action::CastVote.as_str(),
    })?;
    let decision_id = DecisionId::from(body.decision_id);
    let decision = match known_decision(state, decision_id).await {
        Err(ServingError::NotFound { .. }) => {
            return Err(IngestError::UnknownDecision {
                index,
                decision: decision_id,
            }
            .into());
        }
        found => found?,
    };
    let (subject, voter_regions) = match decision.electorate.roll {
        Some(roll) => {
            let claim = state
                .store
                .roll_claim(roll.as_uuid(), claims.sub)
                .await?
                .ok_or_else(|| SchemaError::NotEligible {
                    reason: "this decision counts only its voter roll: claim your invitation first"
                        .into(),
                })?;
            (claim.entry, vec![claim.region])
        }
        None if decision.required_regions(voter_role).is_empty() => (claims.sub, Vec::new()),
        None => (claims.sub, state.store.regions_of(claims.sub).await?),
    };
    decision.admits(voter_role, &voter_regions)?;
    let component: Component = voter_role.component();
    let vote = Vote {
        vote_id: body.vote_id.map_or_else(VoteId::new_random, VoteId::from),
        decision_id: DecisionId::from(body.decision_id),
        voter_id: VoterId::from(subject),
        ballot: body.ballot()?,
        component,
        weight: Weight(if component == Component::Democratic {
            Weight::ONE.0
        } else {
            claims.weight
        }),
        cast_at: now_micros(),
    };
    stand_in(state, vote, claims.sub).await
}

/// `vote` as the log will hold it: its subject stood in for by the salted commitment (and
/// its pseudonym), the casting account sealed under the account's own key. An erased
/// account has no key and casts nothing (`account_erased`).
async fn stand_in(
    state: &SharedState,
    vote: Vote,
    account: Uuid,
) -> Result<LoggedVote, ServingError> {
    let store = state.store.as_ref();
    let key = state.salts.key(store, account).await?;
    let salt = state.salts.salt(store, vote.voter_id.as_uuid()).await?;
    Ok(LoggedVote::new(vote, &VoterSalt(salt)).with_sealed_voter(seal_voter(&key, account)))
}

fn receipt(logged: &LoggedVote, position: Position) -> CastReceipt {
    let leaf = logged.leaf_data();
    CastReceipt {
        vote_id: logged.vote.vote_id,
        decision_id: logged.vote.decision_id,
        position,
        leaf_hash: hex_digits(&canopy_chain::leaf_hash(&leaf)),
        leaf: hex_digits(&leaf[..]),
    }
}

/// `hex::encode` without its char-at-a-time `String`: a receipt's leaf is a few hundred
/// digits, and every cast writes one.
fn hex_digits(bytes: &[u8]) -> String {
    let mut digits = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut digits).expect("the buffer holds two digits a byte");
    String::from_utf8(digits).expect("hex digits are ASCII")
}

/// A decision this replica knows, or one another replica created since it started.
pub(crate) async fn known_decision(
    state: &SharedState,
    id: DecisionId,
) -> Result<Decision, ServingError> {
    if let Some(decision) = state.gate.decision(id) {
        return Ok(decision);
    }
    learn_decisions(state).await?;
    state
        .gate
        .decision(id)
        .ok_or(ServingError::NotFound { what: "decision" })
}

/// Registers with the gate the decisions another replica created since this one started.
async fn learn_decisions(state: &SharedState) -> Result<(), ServingError> {
    let now = now_micros();
    for decision in state.store.decisions().await? {
        if state.gate.decision(decision.id).is_none() {
            state.gate.register(decision, now)?;
        }
    }
    Ok(())
}

/// The first delivery of `vote`'s id by its voter in its decision, if there was one: from
/// the casts this replica answered lately, else from the record (the vote read back from
/// the log at the offset the record took it from).
async fn first_cast(
    state: &SharedState,
    vote: &Vote,
) -> Result<Option<(LoggedVote, Position)>, ServingError> {
    // `vote.voter_id` is the ballot's pseudonym: what the record knows the voter as.
    let (voter, vote_id) = (vote.voter_id.0, vote.vote_id.0);
    if let Some(first) = state.recent_casts.get(voter, vote_id)
        && first.0.vote.decision_id == vote.decision_id
    {
        return Ok(Some(first));
    }
    let Some(offset) = state
        .record
        .as_ref()
        .and_then(|record| record.first_delivery(vote.decision_id, voter, vote_id))
    else {
        return Ok(None);
    };
    let log = Arc::clone(state.gate.log());
    let partition = log.partition_of(vote.decision_id);
    let entries = tokio::task::spawn_blocking(move || log.read_entries(partition, offset, 1))
        .await
        .map_err(|e| ServingError::Internal(e.to_string()))??;
    Ok(entries
        .into_iter()
        .next()
        .and_then(|(position, entry)| match entry {
            VoteLogEntry::Vote(logged) => Some((logged, position)),
            VoteLogEntry::Close(_) => None,
        }))
}

/// The receipt a retried cast gets: the first one's, when the retry is the same vote;
/// refused with `vote_id_reused` when the id came with another ballot.
fn retried_receipt(
    vote: &Vote,
    (first, position): (LoggedVote, Position),
) -> Result<CastReceipt, ServingError> {
    if first.vote.ballot != vote.ballot || first.vote.decision_id != vote.decision_id {
        return Err(ServingError::VoteIdReused {
            vote_id: vote.vote_id,
        });
    }
    Ok(receipt(&first, position))
}

/// Casts an analysis agent's `ballot` on `decision` from `account` in the
/// environmental-data component (weight 1), through the gate and the log like any vote:
/// the latest of the account's votes counts, so a re-run replaces the agent's vote.
/// Returns the receipt.
pub(crate) async fn cast_agent_vote(
    state: &SharedState,
    decision: DecisionId,
    account: Uuid,
    ballot: canopy_schemas::Ballot,
) -> Result<serde_json::Value, ServingError> {
    refuse_if_closed(state, decision).await?;
    let vote = Vote {
        vote_id: VoteId::new_random(),
        decision_id: decision,
        voter_id: VoterId::from(account),
        ballot,
        component: Component::EnvironmentalData,
        weight: Weight::ONE,
        cast_at: now_micros(),
    };
    let logged = stand_in(state, vote, account).await?;
    let (logged, positions) = submit(state, vec![logged]).await?;
    state.recent_casts.remember(&logged[0], positions[0]);
    serde_json::to_value(receipt(&logged[0], positions[0]))
        .map_err(|e| ServingError::Internal(e.to_string()))
}

/// Refuses a new vote for a decision whose lifecycle is set (closed early or by the
/// schedule, cancelled, final), 409 `decision_closed`: the engine would not count it. A
/// retry of a vote cast before the close still gets its receipt (it is checked first).
async fn refuse_if_closed(state: &SharedState, decision: DecisionId) -> Result<(), ServingError> {
    if state.gate.is_closed(decision) {
        return Err(ServingError::DecisionClosed { decision });
    }
    // A node alone (`up`) makes every close, early or by the schedule, through its own
    // gate, which learned the stored ones before it served: the gate is the whole answer,
    // and the vote path reads nothing from the store.
    if state.replicas.is_none() {
        return Ok(());
    }
    // Closed through another replica: the store knows.
    match state.store.decision_lifecycle(decision).await? {
        Some(_) => {
            state.gate.note_closed(decision);
            Err(ServingError::DecisionClosed { decision })
        }
        None => Ok(()),
    }
}

/// Appends votes, already stood in for, durably.
async fn submit(
    state: &SharedState,
    logged: Vec<LoggedVote>,
) -> Result<(Vec<LoggedVote>, Vec<Position>), ServingError> {
    use tracing::Instrument;
    let append =
        || tracing::info_span!("log.append", otel.kind = "producer", entries = logged.len());
    let positions = match state.gate.submit_async(&logged).instrument(append()).await {
        // Created on another replica since this one started: learn it and try once more
        // (the gate refused the whole batch, so nothing was appended).
        Err(IngestError::UnknownDecision { .. }) => {
            learn_decisions(state).await?;
            state
                .gate
                .submit_async(&logged)
                .instrument(append())
                .await?
        }
        result => result?,
    };
    if let Some(last) = positions.iter().max_by_key(|p| (p.partition, p.offset)) {
        state.visibility.note(*last);
    }
    metrics::counter!("canopy_votes_accepted_total").increment(positions.len() as u64);
    Ok((logged, positions))
}

#[utoipa::path(post, path = "/api/v1/voting/cast-vote", tag = "voting", request_body = CastBody, security(("bearer" = [])), responses((status = 201, body = CastReceipt, description = "durable; voter, component and weight come from the token"), (status = 403, body = ErrorBody, description = "forbidden (a role that does not vote), not_eligible (outside the decision's electorate)"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "vote_id_reused: the vote id came before with another option; a retry of the same vote gets the first receipt"), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn cast_vote(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<CastBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::CastVote).await?;
    let logged = eligible_vote(&state, &caller.0, &body, 0).await?;
    if body.vote_id.is_some()
        && let Some(first) = first_cast(&state, &logged.vote).await?
    {
        let receipt = retried_receipt(&logged.vote, first)?;
        return Ok((StatusCode::CREATED, Json(receipt)).into_response());
    }
    refuse_if_closed(&state, logged.vote.decision_id).await?;
    let (logged, positions) = submit(&state, vec![logged]).await?;
    state.recent_casts.remember(&logged[0], positions[0]);
    let receipt = receipt(&logged[0], positions[0]);
    state.confirmations.note(PendingConfirmation {
        account: caller.0.sub,
        decision: logged[0].vote.decision_id,
        vote_id: logged[0].vote.vote_id,
        leaf_hash: receipt.leaf_hash.clone(),
        position: positions[0],
        cast_at_ms: crate::receipts::now_ms(),
    });
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchVote {
    /// The voter's own access token: a gateway relays votes, it does not speak for voters.
    voter_token: String,
    #[serde(flatten)]
    vote: CastBody,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchBody {
    votes: Vec<BatchVote>,
}

#[utoipa::path(post, path = "/api/v1/voting/cast-votes", tag = "voting", request_body = BatchBody, security(("bearer" = [])), responses((status = 201, description = "receipts, in order (a retried vote gets its first receipt)"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "vote_id_reused"), (status = 422, body = ErrorBody)))]
pub(crate) async fn cast_votes(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::CastForOthers).await?;
    if body.votes.is_empty() || body.votes.len() > 1_000 {
        return Err(ServingError::BadRequest(
            "a batch holds 1 to 1000 votes".into(),
        ));
    }
    let mut votes = Vec::with_capacity(body.votes.len());
    for (index, entry) in body.votes.iter().enumerate() {
        let claims = state
            .keys
            .verify(&entry.voter_token)
            .map_err(|e| ServingError::BadRequest(format!("vote {index}: {e}")))?;
        if !Action::CastVote.allowed(claims.role) {
            return Err(ServingError::BadRequest(format!(
                "vote {index}: the {} role does not vote",
                claims.role.as_str()
            )));
        }
        votes.push(eligible_vote(&state, &claims, &entry.vote, index).await?);
    }
    // Retried votes get their first receipts; the new ones are appended together.
    let mut receipts: Vec<Option<CastReceipt>> = Vec::with_capacity(votes.len());
    let mut new_votes = Vec::new();
    for (vote, entry) in votes.into_iter().zip(&body.votes) {
        let first = match entry.vote.vote_id {
            Some(_) => first_cast(&state, &vote.vote).await?,
            None => None,
        };
        match first {
            Some(first) => receipts.push(Some(retried_receipt(&vote.vote, first)?)),
            None => {
                receipts.push(None);
                new_votes.push(vote);
            }
        }
    }
    let decisions: std::collections::BTreeSet<DecisionId> = new_votes
        .iter()
        .map(|logged| logged.vote.decision_id)
        .collect();
    for decision in decisions {
        refuse_if_closed(&state, decision).await?;
    }
    let (logged, positions) = match new_votes.is_empty() {
        true => (Vec::new(), Vec::new()),
        false => submit(&state, new_votes).await?,
    };
    let mut appended = logged.iter().zip(positions);
    let receipts: Vec<CastReceipt> = receipts
        .into_iter()
        .map(|retried| {
            retried.unwrap_or_else(|| {
                let (vote, position) = appended.next().expect("one appended vote per new vote");
                state.recent_casts.remember(vote, position);
                receipt(vote, position)
            })
        })
        .collect();
    Ok((StatusCode::CREATED, Json(json!({ "receipts": receipts }))).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FreshnessQuery {
    /// Wait until the result includes this offset of the decision's partition (the
    /// position a cast returned).
    #[serde(default)]
    min_offset: Option<u64>,
}

/// A read of a decision's results: a caller allowed to read them, the decision, and its
/// view at least as fresh as `min_offset` asks (waiting up to `max_results_wait`).
pub(crate) struct ResultsRead {
    decision: Decision,
    view: Option<DecisionView>,
    /// Whether the caller may see weighted sums (an admin): a cell's weight, watched before
    /// and after a vote, is that voter's weight, which would name an expert across decisions.
    sees_weights: bool,
}

impl FromRequestParts<SharedState> for ResultsRead {
    type Rejection = ServingError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(state, Action::ReadResults).await?;
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ServingError::BadRequest(rejection.body_text()))?;
        let Query(freshness) = Query::<FreshnessQuery>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ServingError::BadRequest(rejection.body_text()))?;
        let decision_id = DecisionId::from(id);
        let decision = known_decision(state, decision_id).await?;
        let view = match freshness.min_offset {
            None => state.views.get(decision_id)?,
            Some(offset) => {
                // A task and a timer while it waits, no thread; a user parks only a few.
                let _parked = state.parked_waits.park(
                    caller.0.sub,
                    state.config.max_waits_per_user,
                    state.config.max_waits,
                )?;
                let partition = state.gate.log().partition_of(decision_id);
                canopy_dataflow::wait_included(
                    state.views.as_ref(),
                    decision_id,
                    Position { partition, offset },
                    state.config.max_results_wait,
                )
                .await?
            }
        };
        Ok(Self {
            decision,
            view,
            sees_weights: caller.0.role == crate::auth::Role::Admin,
        })
    }
}

#[utoipa::path(get, path = "/api/v1/voting/decision/{id}/results", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id"), FreshnessQuery), security(("bearer" = [])), responses((status = 200, description = "composite score per option, turnout, quorum, as_of"), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody, description = "too_many_waits: the account already has as many reads waiting for a min_offset as it may (or rate_limited)"), (status = 504, body = ErrorBody, description = "results_timeout")))]
pub(crate) async fn results(
    ResultsRead { decision, view, .. }: ResultsRead,
) -> Json<serde_json::Value> {
    Json(results_body(&decision, view.as_ref()))
}

/// A decision's results as the results route and the live push show them.
pub(crate) fn results_body(decision: &Decision, view: Option<&DecisionView>) -> serde_json::Value {
    let tally = view.map(|v| &v.tally);
    let options: Vec<serde_json::Value> = decision
        .options
        .iter()
        .enumerate()
        .map(|(index, label)| {
            let composite = tally.map_or(0.0, |t| t.composite(index as u16));
            json!({ "option": index, "label": label, "composite": composite })
        })
        .collect();
    let rounds: Vec<serde_json::Value> = tally
        .map(|t| t.rounds.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|round| {
            let composite: Vec<f64> = (0..decision.options.len() as u16)
                .map(|option| round.tally.composite(option))
                .collect();
            json!({
                "continuing": round.continuing,
                "composite": composite,
                "exhausted": round.exhausted_by_component.iter().map(|e| e.count).sum::<u64>(),
                "eliminated": round.eliminated,
                "tie_broken": round.tie_broken,
            })
        })
        .collect();
    json!({
        "decision_id": decision.id,
        "title": decision.title,
        "method": decision.method,
        "options": options,
        "turnout": tally.map_or(0, |t| t.turnout),
        "quorum": decision.quorum,
        "quorum_met": tally.is_some_and(|t| t.quorum_met),
        "leading": tally.map_or(Outcome::NoVotes, Outcome::of),
        "rounds": rounds,
        "as_of": view.map(|v| v.as_of),
    })
}

#[utoipa::path(get, path = "/api/v1/voting/decision/{id}/breakdown", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id"), FreshnessQuery), security(("bearer" = [])), responses((status = 200, description = "count and share per option and component, and the weighted sum for admins"), (status = 404, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub(crate) async fn breakdown(
    ResultsRead {
        decision,
        view,
        sees_weights,
    }: ResultsRead,
) -> Json<serde_json::Value> {
    Json(breakdown_body(&decision, view.as_ref(), sees_weights))
}

/// A decision's count and share per option and component, as the breakdown route and the
/// live push show them; the weighted sums only for `sees_weights` (admins).
pub(crate) fn breakdown_body(
    decision: &Decision,
    view: Option<&DecisionView>,
    sees_weights: bool,
) -> serde_json::Value {
    let cells: Vec<serde_json::Value> = view
        .map(|v| v.tally.cells.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|cell| {
            let mut shown = json!({
                "option": cell.option,
                "component": cell.component,
                "count": cell.count,
                "share": cell.share_ppb as f64 / canopy_schemas::SHARE_SCALE as f64,
            });
            if sees_weights {
                shown["weight"] =
                    json!(cell.weight_sum as f64 / f64::from(canopy_schemas::WEIGHT_SCALE));
            }
            shown
        })
        .collect();
    json!({
        "decision_id": decision.id,
        "component_weights": decision.weights,
        "cells": cells,
        "turnout_by_component": view.map(|v| v.tally.turnout_by_component),
        "as_of": view.map(|v| v.as_of),
    })
}

#[utoipa::path(get, path = "/api/v1/voting/active-decisions", tag = "voting", security(("bearer" = [])), responses((status = 200, description = "decisions open now (in their window, not closed early or cancelled), in the order they were made")))]
pub(crate) async fn active_decisions(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<Vec<Decision>>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    // Open by the window and not closed early or cancelled: the search's status filter.
    let open = DecisionSearch {
        status: Some(DecisionStatus::Open),
        now: now_micros(),
        limit: i64::MAX,
        ..Default::default()
    };
    let open: std::collections::HashSet<DecisionId> = state
        .store
        .search_decisions(&open)
        .await?
        .decisions
        .iter()
        .map(|decision| decision.id)
        .collect();
    // In the order they were made, as this list always was.
    let decisions = state.store.decisions().await?;
    Ok(Json(
        decisions
            .into_iter()
            .filter(|decision| open.contains(&decision.id))
            .collect(),
    ))
}

/// A decision as answers show it: with its status now.
#[derive(Serialize)]
struct DecisionShown<'a> {
    #[serde(flatten)]
    decision: &'a Decision,
    status: DecisionStatus,
}

// --- The lifecycle: one decision, its edits, its early close and its cancellation ---

/// The decision `id` as its page shows it: its parameters, its status now (the stored
/// lifecycle, else its window's), its close once recorded, its signed result once final.
async fn decision_page(
    state: &SharedState,
    id: DecisionId,
) -> Result<serde_json::Value, ServingError> {
    let stored = state
        .store
        .stored_decision(id)
        .await?
        .ok_or(ServingError::NotFound { what: "decision" })?;
    let status = stored.status_at(now_micros());
    let close = state.store.decision_close(id).await?.map(
        |close| json!({ "position": close.position, "kind": close.kind, "at": close.closed_at }),
    );
    let result = match status {
        DecisionStatus::Final => state.store.decision_result(id).await?,
        _ => None,
    };
    let result = result
        .map(|row| {
            let result: serde_json::Value = serde_json::from_str(&row.result).map_err(|e| {
                ServingError::Storage(format!("a stored result does not parse: {e}"))
            })?;
            Ok::<_, ServingError>(json!({
                "result": result,
                "statement": row.statement,
                "tree_size": row.tree_size,
                "root": row.root,
                "position": row.position,
                "finalized_at": row.finalized_at,
            }))
        })
        .transpose()?;
    let mut page = serde_json::to_value(DecisionShown {
        decision: &stored.decision,
        status,
    })
    .map_err(|e| ServingError::Internal(e.to_string()))?;
    page["close"] = close.unwrap_or_default();
    page["result"] = result.unwrap_or_default();
    Ok(page)
}

/// Appends a row to the decision's history. What it records has happened already, so a
/// failure is logged rather than answered: a client told the request failed would retry it.
async fn record_history(
    state: &SharedState,
    decision: DecisionId,
    status: &str,
    at: i64,
    actor: Uuid,
    detail: serde_json::Value,
) {
    let written = state
        .store
        .append_history(
            decision,
            status,
            at,
            &actor.to_string(),
            &detail.to_string(),
        )
        .await;
    if let Err(error) = written {
        tracing::error!(%error, %decision, status, "could not write the decision's history");
    }
}

/// The stored decision `id`, if `claims` may change its lifecycle: its owner's or an
/// admin's to change. Anyone else is refused 403 `not_owner`, and the refusal audited.
async fn owned_decision(
    state: &SharedState,
    claims: &Claims,
    id: DecisionId,
    action: &'static str,
) -> Result<StoredDecision, ServingError> {
    let stored = state
        .store
        .stored_decision(id)
        .await?
        .ok_or(ServingError::NotFound { what: "decision" })?;
    if stored.owner == claims.sub || claims.role == Role::Admin {
        return Ok(stored);
    }
    let detail = json!({ "action": action, "decision_id": id, "role": claims.role.as_str(), "reason": "not_owner" });
    state.audit_as_user(claims.sub, "refused", detail).await;
    Err(ServingError::NotOwner { action })
}

#[utoipa::path(get, path = "/api/v1/voting/decisions/{id}", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id")), security(("bearer" = [])), responses((status = 200, description = "the decision; its `status` now (`scheduled`, `open`, `closed`, `final`, `cancelled`: the stored lifecycle, else the window's); `close` once one is recorded (`position` in the vote log, `kind` `schedule`/`early`/`cancel`, `at` µs), else null; `result` once final (`result` JSON, the signed `statement`, `tree_size`, `root`, `position`, `finalized_at`), else null"), (status = 404, body = ErrorBody)))]
pub(crate) async fn decision(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    Ok(Json(decision_page(&state, DecisionId::from(id)).await?))
}

/// The fields of a scheduled decision an edit replaces; each absent one stays.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionPatch {
    title: Option<String>,
    /// At most 10000 bytes.
    description: Option<String>,
    region: Option<String>,
    options: Option<Vec<String>>,
    /// Microseconds since the Unix epoch.
    opens_at: Option<i64>,
    closes_at: Option<i64>,
    /// Millionths per component (democratic, expert, community, environmental); sum 1000000.
    #[schema(value_type = Option<Vec<u32>>)]
    weights: Option<ComponentWeights>,
    quorum: Option<u64>,
    #[schema(value_type = Option<String>, example = "single_choice")]
    method: Option<Method>,
    /// Quadratic only: each voter's credits (1 to 10000); 0 for every other method.
    credits: Option<u32>,
    /// As at creation: `{"roles": […], "regions": […], "roll": "<roll id>"}`.
    #[schema(value_type = Option<Object>)]
    electorate: Option<Electorate>,
}

impl DecisionPatch {
    /// `decision` with the patch's fields put in, and the names of those that differ.
    fn applied_to(self, decision: &Decision) -> (Decision, Vec<&'static str>) {
        let mut edited = decision.clone();
        let mut changed = Vec::new();
        macro_rules! put {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field
                    && value != edited.$field
                {
                    edited.$field = value;
                    changed.push(stringify!($field));
                }
            )*};
        }
        put!(
            title,
            description,
            region,
            options,
            opens_at,
            closes_at,
            weights,
            quorum,
            method,
            credits,
            electorate
        );
        (edited, changed)
    }
}

#[utoipa::path(patch, path = "/api/v1/voting/decisions/{id}", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id")), request_body = DecisionPatch, security(("bearer" = [])), responses((status = 200, description = "the decision as edited (as GET shows it)"), (status = 403, body = ErrorBody, description = "not_owner: only its owner or an admin edits a decision"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "decision_not_editable: it has opened, or was closed or cancelled"), (status = 422, body = ErrorBody, description = "the edited decision is not valid (as at creation), or the patch changes nothing")))]
pub(crate) async fn edit_decision(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    ApiJson(patch): ApiJson<DecisionPatch>,
) -> Result<Json<serde_json::Value>, ServingError> {
    let id = DecisionId::from(id);
    let stored = owned_decision(&state, &caller.0, id, "edit a decision").await?;
    let now = now_micros();
    if stored.status_at(now) != DecisionStatus::Scheduled {
        return Err(ServingError::DecisionNotEditable { decision: id });
    }
    let (decision, changed) = patch.applied_to(&stored.decision);
    if changed.is_empty() {
        return Err(ServingError::BadRequest("the patch changes nothing".into()));
    }
    if decision.description.len() > MAX_DESCRIPTION_LEN {
        return Err(ServingError::BadRequest(format!(
            "a description is at most {MAX_DESCRIPTION_LEN} bytes"
        )));
    }
    if let Some(roll) = decision.electorate.roll
        && decision.electorate.roll != stored.decision.electorate.roll
        && state.store.roll_summary(roll.as_uuid()).await?.is_none()
    {
        return Err(SchemaError::Electorate("no roll has that id").into());
    }
    validate_decision(&decision)?;
    // The store checks again that it is still scheduled, in the statement that writes.
    state.store.update_decision(&decision, now).await?;
    state.gate.register(decision.clone(), now)?;
    if let Some(engine) = &state.engine {
        engine.register(decision.clone());
    }
    let detail = json!({ "decision_id": id, "fields": changed });
    state
        .audit_as_user(caller.0.sub, "edit_decision", detail.clone())
        .await;
    record_history(&state, id, "edited", now, caller.0.sub, detail).await;
    Ok(Json(decision_page(&state, id).await?))
}

/// Why the owner closes or cancels, for the audit trail and the history.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloseBody {
    /// At most 500 bytes.
    #[serde(default)]
    reason: String,
}

/// The longest reason a close or a cancellation may give.
pub const MAX_CLOSE_REASON_LEN: usize = 500;

/// Appends the close to the vote log (from its offset on no vote of the decision counts,
/// on any worker), records it, and audits it as `action`.
async fn append_close(
    state: &SharedState,
    claims: &Claims,
    id: DecisionId,
    kind: CloseKind,
    reason: &str,
    action: &str,
) -> Result<(), ServingError> {
    let at = now_micros();
    let close = DecisionClose {
        decision: id,
        kind,
        at,
        by: claims.sub.as_u128(),
    };
    let position = state.gate.close_async(close).await?;
    let row = DecisionCloseRow {
        decision_id: id,
        position,
        kind,
        closed_at: at,
        closed_by: Some(claims.sub),
    };
    state.store.record_close(&row).await?;
    let detail = json!({ "decision_id": id, "kind": kind, "position": position, "reason": reason });
    state.audit_as_user(claims.sub, action, detail).await;
    Ok(())
}

fn close_reason(body: &CloseBody) -> Result<&str, ServingError> {
    if body.reason.len() > MAX_CLOSE_REASON_LEN {
        return Err(ServingError::BadRequest(format!(
            "a reason is at most {MAX_CLOSE_REASON_LEN} bytes"
        )));
    }
    Ok(&body.reason)
}

#[utoipa::path(post, path = "/api/v1/voting/decisions/{id}/close", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id")), request_body = CloseBody, security(("bearer" = [])), responses((status = 200, description = "the decision, closed (as GET shows it): the votes before the close in the log count, none after"), (status = 403, body = ErrorBody, description = "not_owner"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "decision_not_open: scheduled, or already closed, final or cancelled (a second close is refused, not repeated)")))]
pub(crate) async fn close_decision(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<CloseBody>,
) -> Result<Json<serde_json::Value>, ServingError> {
    let id = DecisionId::from(id);
    let reason = close_reason(&body)?;
    let stored = owned_decision(&state, &caller.0, id, "close a decision").await?;
    if stored.status_at(now_micros()) != DecisionStatus::Open {
        return Err(ServingError::DecisionNotOpen { decision: id });
    }
    append_close(
        &state,
        &caller.0,
        id,
        CloseKind::Early,
        reason,
        "close_decision",
    )
    .await?;
    Ok(Json(decision_page(&state, id).await?))
}

/// Whether any vote of the decision is counted yet: a voter in its view, or a checkpoint
/// of its record.
async fn has_votes(state: &SharedState, id: DecisionId) -> Result<bool, ServingError> {
    let turnout = state.views.get(id)?.map_or(0, |view| view.tally.turnout);
    Ok(turnout > 0 || !state.store.checkpoints(id).await?.is_empty())
}

#[utoipa::path(post, path = "/api/v1/voting/decisions/{id}/cancel", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id")), request_body = CloseBody, security(("bearer" = [])), responses((status = 200, description = "the decision, cancelled (as GET shows it): no result is declared"), (status = 403, body = ErrorBody, description = "not_owner"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "decision_has_votes: open and a vote is counted (close it instead); decision_closed: already closed, final or cancelled")))]
pub(crate) async fn cancel_decision(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    ApiJson(body): ApiJson<CloseBody>,
) -> Result<Json<serde_json::Value>, ServingError> {
    let id = DecisionId::from(id);
    let reason = close_reason(&body)?;
    let stored = owned_decision(&state, &caller.0, id, "cancel a decision").await?;
    match stored.status_at(now_micros()) {
        DecisionStatus::Scheduled => {}
        DecisionStatus::Open if !has_votes(&state, id).await? => {}
        DecisionStatus::Open => return Err(ServingError::DecisionHasVotes { decision: id }),
        DecisionStatus::Closed | DecisionStatus::Final | DecisionStatus::Cancelled => {
            return Err(ServingError::DecisionClosed { decision: id });
        }
    }
    append_close(
        &state,
        &caller.0,
        id,
        CloseKind::Cancel,
        reason,
        "cancel_decision",
    )
    .await?;
    Ok(Json(decision_page(&state, id).await?))
}

/// The highest page number any paged listing here accepts.
pub const MAX_PAGE: i64 = 10_000;
/// The most decisions a page of a search holds, and how many it holds when not told.
pub const MAX_SEARCH_PAGE_SIZE: i64 = 100;
pub const DEFAULT_SEARCH_PAGE_SIZE: i64 = 20;
/// The longest search query, in characters.
pub const MAX_SEARCH_QUERY_CHARS: usize = 200;
/// How many votes a page of `my-votes` holds.
pub const MY_VOTES_PAGE_SIZE: usize = 50;

fn bad_parameter(code: &'static str, message: impl Into<String>) -> ServingError {
    ServingError::BadParameter {
        code,
        message: message.into(),
    }
}

/// `page`: 1 (absent) to [`MAX_PAGE`].
fn page_number(page: Option<&str>) -> Result<i64, ServingError> {
    let Some(page) = page else { return Ok(1) };
    page.parse::<i64>()
        .ok()
        .filter(|page| (1..=MAX_PAGE).contains(page))
        .ok_or_else(|| {
            bad_parameter(
                "page_out_of_range",
                format!("page is a whole number from 1 to {MAX_PAGE}"),
            )
        })
}

/// The next page's number, if there are decisions or votes past this one.
fn next_page(page: i64, per_page: i64, total: i64) -> Option<i64> {
    (page * per_page < total).then_some(page + 1)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    /// Words that must all be in the title or the description (stemmed: "flooding" finds
    /// "flood"); at most 200 characters.
    #[serde(default)]
    q: Option<String>,
    /// The decision's region, exactly.
    #[serde(default)]
    region: Option<String>,
    /// `scheduled`, `open`, `closed`, `final` or `cancelled`, as of now.
    #[serde(default)]
    status: Option<String>,
    /// The voting method: `single_choice`.
    #[serde(default)]
    method: Option<String>,
    /// µs since the Unix epoch: only decisions whose window closes after it.
    #[serde(default)]
    from: Option<String>,
    /// µs since the Unix epoch: only decisions whose window opens before it.
    #[serde(default)]
    to: Option<String>,
    /// 1 to 10000; 1 by default.
    #[serde(default)]
    page: Option<String>,
    /// 1 to 100; 20 by default.
    #[serde(default)]
    per_page: Option<String>,
}

impl SearchQuery {
    /// The search this asks for, refused with a stable code per parameter when malformed.
    fn search(&self, now: i64) -> Result<(DecisionSearch, i64, i64), ServingError> {
        let q = self.q.as_deref().unwrap_or_default();
        if q.chars().count() > MAX_SEARCH_QUERY_CHARS {
            return Err(bad_parameter(
                "query_too_long",
                format!("q is at most {MAX_SEARCH_QUERY_CHARS} characters"),
            ));
        }
        if self
            .region
            .as_ref()
            .is_some_and(|region| region.len() > 100)
        {
            return Err(bad_parameter("bad_region", "a region is at most 100 bytes"));
        }
        let status = self
            .status
            .as_deref()
            .map(|status| {
                DecisionStatus::parse(status).ok_or_else(|| {
                    bad_parameter(
                        "unknown_status",
                        format!(
                            "status is one of {}",
                            DecisionStatus::ALL.map(DecisionStatus::as_str).join(", ")
                        ),
                    )
                })
            })
            .transpose()?;
        let method = self
            .method
            .as_deref()
            .map(|method| {
                Method::parse(method).ok_or_else(|| {
                    bad_parameter(
                        "unknown_method",
                        format!(
                            "method is one of {}",
                            Method::ALL.map(Method::as_str).join(", ")
                        ),
                    )
                })
            })
            .transpose()?;
        let instant = |name: &str, value: Option<&str>| {
            value
                .map(|value| {
                    value.parse::<i64>().map_err(|_| {
                        bad_parameter(
                            "bad_date",
                            format!("{name} is µs since the Unix epoch, a whole number"),
                        )
                    })
                })
                .transpose()
        };
        let from = instant("from", self.from.as_deref())?;
        let to = instant("to", self.to.as_deref())?;
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(bad_parameter("bad_date", "from is before to"));
        }
        let page = page_number(self.page.as_deref())?;
        let per_page = match self.per_page.as_deref() {
            None => DEFAULT_SEARCH_PAGE_SIZE,
            Some(size) => size
                .parse::<i64>()
                .ok()
                .filter(|size| (1..=MAX_SEARCH_PAGE_SIZE).contains(size))
                .ok_or_else(|| {
                    bad_parameter(
                        "page_size_out_of_range",
                        format!("per_page is a whole number from 1 to {MAX_SEARCH_PAGE_SIZE}"),
                    )
                })?,
        };
        let search = DecisionSearch {
            words: DecisionSearch::words_of(q),
            region: self.region.clone(),
            status,
            method,
            from,
            to,
            now,
            offset: (page - 1) * per_page,
            limit: per_page,
        };
        Ok((search, page, per_page))
    }
}

#[utoipa::path(get, path = "/api/v1/voting/decisions", tag = "voting", params(SearchQuery), security(("bearer" = [])), responses((status = 200, description = "`decisions` (each with its `status` now) matching every filter, newest first, then by id; `page`, `per_page`, `total`, `next_page`"), (status = 400, body = ErrorBody, description = "query_too_long, unknown_status, unknown_method, bad_date, bad_region, page_out_of_range, page_size_out_of_range; bad_request for a parameter it does not know")))]
pub(crate) async fn search_decisions(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<SearchQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    let now = now_micros();
    let (search, page, per_page) = query.search(now)?;
    let found = state.store.search_decisions(&search).await?;
    let decisions: Vec<DecisionShown> = found
        .decisions
        .iter()
        .zip(&found.statuses)
        .map(|(decision, status)| DecisionShown {
            decision,
            status: *status,
        })
        .collect();
    Ok(Json(json!({
        "decisions": decisions,
        "page": page,
        "per_page": per_page,
        "total": found.total,
        "next_page": next_page(page, per_page, found.total),
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct MyVotesQuery {
    /// 1 to 10000; 1 by default. 50 votes a page.
    #[serde(default)]
    page: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/voting/my-votes", tag = "voting", params(MyVotesQuery), security(("bearer" = [])), responses((status = 200, description = "the caller's current vote in each decision they voted in, most recent decisions first, 50 a page: the decision, the option, the receipt (as cast-vote gave it; `position` null on a replica reading the record from tiles) and the proof status (`pending`, `checkpointed`, `anchored`) with links to the proof routes; `page`, `per_page`, `total`, `next_page`"), (status = 400, body = ErrorBody, description = "page_out_of_range"), (status = 503, body = ErrorBody, description = "record_not_here")))]
pub(crate) async fn my_votes(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<MyVotesQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    let page = page_number(query.page.as_deref())?;
    let account = caller.0.sub;
    // A living account only: an erased one's leftover token finds nothing.
    state
        .store
        .user_by_id(account)
        .await?
        .ok_or(ServingError::AccountErased)?;
    let record = state.record.clone().ok_or(ServingError::RecordNotHere)?;
    let lookups = ballot_pseudonyms(&state, account).await?;
    let found = tokio::task::spawn_blocking(move || {
        lookups
            .into_iter()
            .filter_map(|(decision, pseudonym)| {
                record
                    .latest_of(decision.id, pseudonym)
                    .map(|leaf| (decision, pseudonym, leaf))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ServingError::Internal(e.to_string()))?;
    let total = found.len() as i64;
    let per_page = MY_VOTES_PAGE_SIZE as i64;
    let mut votes = Vec::new();
    let mut confirmed_batches = std::collections::HashMap::new();
    for (decision, pseudonym, leaf) in found
        .into_iter()
        .skip((page as usize - 1) * MY_VOTES_PAGE_SIZE)
        .take(MY_VOTES_PAGE_SIZE)
    {
        if let Some(vote) =
            my_vote(&state, &decision, pseudonym, leaf, &mut confirmed_batches).await?
        {
            votes.push(vote);
        }
    }
    Ok(Json(json!({
        "votes": votes,
        "page": page,
        "per_page": per_page,
        "total": total,
        "next_page": next_page(page, per_page, total),
    })))
}

/// Every decision the account may have a ballot in, most recent first, with the ballot's
/// pseudonym there: its subject is the account, or in a decision of a roll the entry the
/// account holds, and the pseudonym is cut from the subject's salted commitment. Nothing
/// is stored from voter to decision; a subject without a salt never cast.
async fn ballot_pseudonyms(
    state: &SharedState,
    account: Uuid,
) -> Result<Vec<(Decision, u128)>, ServingError> {
    use std::collections::HashMap;
    let mut entries: HashMap<canopy_schemas::RollId, Option<Uuid>> = HashMap::new();
    let mut salts: HashMap<Uuid, Option<[u8; 32]>> = HashMap::new();
    let mut decisions = state.store.decisions().await?;
    decisions.reverse();
    let mut lookups = Vec::new();
    for decision in decisions {
        let subject = match decision.electorate.roll {
            None => Some(account),
            Some(roll) => match entries.get(&roll) {
                Some(entry) => *entry,
                None => {
                    let entry = state
                        .store
                        .roll_claim(roll.as_uuid(), account)
                        .await?
                        .map(|claim| claim.entry);
                    *entries.entry(roll).or_insert(entry)
                }
            },
        };
        let Some(subject) = subject else { continue };
        let salt = match salts.get(&subject) {
            Some(salt) => *salt,
            None => {
                let salt = state.store.existing_voter_salt(subject).await?;
                *salts.entry(subject).or_insert(salt)
            }
        };
        let Some(salt) = salt else { continue };
        let pseudonym =
            VoterCommitment::new(&VoterSalt(salt), VoterId::from(subject), decision.id).pseudonym();
        lookups.push((decision, pseudonym.0));
    }
    Ok(lookups)
}

/// One entry of `my-votes`: the vote the leaf holds (from the log at the leaf's offset,
/// else from the record's entry), its receipt and its proof status.
async fn my_vote(
    state: &SharedState,
    decision: &Decision,
    pseudonym: u128,
    leaf: canopy_dataflow::VoterLeaf,
    confirmed_batches: &mut std::collections::HashMap<i64, bool>,
) -> Result<Option<serde_json::Value>, ServingError> {
    let log = Arc::clone(state.gate.log());
    let partition = log.partition_of(decision.id);
    let position = leaf.offset.map(|offset| Position { partition, offset });
    // The log has the vote's cast time, which a version-2 leaf leaves out: read from the
    // log where the offset is known, else from the leaf (no time) where only tiles are.
    let read_from_log = match leaf.offset {
        Some(offset) => tokio::task::spawn_blocking(move || log.read_entries(partition, offset, 1))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))??
            .into_iter()
            .next()
            .and_then(|(_, entry)| match entry {
                VoteLogEntry::Vote(logged) => Some(logged),
                VoteLogEntry::Close(_) => None,
            }),
        None => None,
    };
    let from_log = read_from_log.is_some();
    let logged = match (read_from_log, leaf.entry) {
        (Some(logged), _) => Some(logged),
        (None, Some(entry)) => Some(LoggedVote::from_leaf_data(&entry.0)?),
        (None, None) => None,
    };
    // Only the caller's own ballot, whatever the record answered.
    let Some(logged) = logged.filter(|logged| {
        logged.vote.voter_id.0 == pseudonym && logged.vote.decision_id == decision.id
    }) else {
        tracing::warn!(decision = %decision.id, index = leaf.index, "a voter's leaf could not be read back");
        return Ok(None);
    };
    let entry = logged.leaf_data();
    let leaf_hash = hex::encode(canopy_chain::leaf_hash(&entry));
    let checkpoints = state.store.checkpoints(decision.id).await?;
    let covering: Vec<&CheckpointRow> = checkpoints
        .iter()
        .filter(|checkpoint| checkpoint.tree_size as u64 > leaf.index)
        .collect();
    let mut anchored = None;
    for checkpoint in covering.iter().rev() {
        let Some(batch) = checkpoint.batch_id else {
            continue;
        };
        let confirmed = match confirmed_batches.get(&batch) {
            Some(confirmed) => *confirmed,
            None => {
                let confirmed = state
                    .store
                    .anchor_batch(batch)
                    .await?
                    .is_some_and(|row| row.confirmed_at.is_some());
                *confirmed_batches.entry(batch).or_insert(confirmed)
            }
        };
        if confirmed {
            anchored = Some(checkpoint.tree_size);
            break;
        }
    }
    let base = format!("/api/v1/audit/decisions/{}", decision.id);
    let mut links = json!({
        "proof": format!("{base}/proof?leaf={leaf_hash}"),
        "checkpoints": format!("{base}/checkpoints"),
    });
    let (status, checkpoint_size) = match (anchored, covering.last()) {
        (Some(size), _) => {
            links["anchor"] = json!(format!("{base}/checkpoints/{size}/anchor"));
            ("anchored", Some(size))
        }
        (None, Some(latest)) => ("checkpointed", Some(latest.tree_size)),
        (None, None) => ("pending", None),
    };
    let option = match logged.vote.ballot {
        Ballot::SingleChoice(option) => json!({
            "index": option,
            "label": decision.options.get(usize::from(option)),
        }),
        _ => serde_json::Value::Null,
    };
    Ok(Some(json!({
        "decision_id": decision.id,
        "title": decision.title,
        "option": option,
        "ballot": logged.vote.ballot,
        "cast_at": (from_log || logged.leaf_version == LeafVersion::V1).then_some(logged.vote.cast_at),
        "receipt": {
            "vote_id": logged.vote.vote_id,
            "decision_id": decision.id,
            "position": position,
            "leaf_hash": leaf_hash,
            "leaf": hex::encode(&entry[..]),
        },
        "proof": {
            "status": status,
            "index": leaf.index,
            "checkpoint_size": checkpoint_size,
            "links": links,
        },
    })))
}
