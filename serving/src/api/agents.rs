//! The analysis agents: `/api/v1/agents/*`. Analyses run over the decision's stored impact
//! statement (or one sent for a draft), the region's evidence from the lake and the vote
//! so far; invoking the agents casts their votes in the environmental-data component
//! through the log, one per agent per decision.

use axum::Json;
use axum::extract::{Path, State};
use canopy_agents::{AgentId, Analysis, ImpactStatement, Proposal, ballot_for};
use canopy_schemas::clock::now_micros;
use canopy_schemas::{Decision, DecisionId, SchemaError, VoterRole};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::extract::{ApiJson, Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;

fn service(state: &SharedState) -> Result<&canopy_agents::AgentService, ServingError> {
    state.agents.as_deref().ok_or(ServingError::NotFound {
        what: "analysis agents on this node",
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalyzeBody {
    decision_id: Uuid,
    /// A statement to assess in place of the one stored with the decision (a draft).
    #[serde(default)]
    impact_statement: Option<ImpactStatement>,
}

/// `decision`'s stored impact statement, or `not_found` when it has none.
async fn stored_statement(
    state: &SharedState,
    decision: DecisionId,
) -> Result<ImpactStatement, ServingError> {
    let stored = state
        .store
        .impact_statement(decision)
        .await?
        .ok_or(ServingError::NotFound {
            what: "impact statement of that decision",
        })?;
    serde_json::from_str(&stored).map_err(|e| {
        ServingError::Storage(format!("a stored impact statement does not parse: {e}"))
    })
}

async fn analysis(
    state: &SharedState,
    decision: Decision,
    statement: ImpactStatement,
) -> Result<Analysis, ServingError> {
    let agents = service(state)?;
    let view = state.views.get(decision.id)?;
    let proposal = Proposal::new(decision, statement)?;
    let analysis = agents
        .analyze(&proposal, view.as_ref().map(|v| &v.tally), now_micros())
        .await?;
    if let Some(rollback) = &analysis.rollback {
        state
            .audit(
                "system",
                "model_rolled_back",
                json!({ "version": rollback.version, "reason": rollback.reason }),
            )
            .await;
    }
    Ok(analysis)
}

#[utoipa::path(post, path = "/api/v1/agents/analyze-proposal", tag = "agents", request_body = AnalyzeBody, security(("bearer" = [])), responses((status = 200, body = Analysis, description = "each agent's assessment with its evidence (the lake rows read) and version, their consensus, and the consensus model's prediction with its version"), (status = 403, body = ErrorBody, description = "forbidden: analysts, operators and admins analyse"), (status = 404, body = ErrorBody, description = "not_found: the decision, or its impact statement when none is sent"), (status = 422, body = ErrorBody, description = "invalid_impact_statement"), (status = 503, body = ErrorBody, description = "busy: too many analyses running")))]
pub(crate) async fn analyze_proposal(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<AnalyzeBody>,
) -> Result<Json<Analysis>, ServingError> {
    caller.require(&state, Action::AnalyzeProposals).await?;
    let decision =
        super::voting::known_decision(&state, DecisionId::from(body.decision_id)).await?;
    let statement = match body.impact_statement {
        Some(statement) => statement,
        None => stored_statement(&state, decision.id).await?,
    };
    Ok(Json(analysis(&state, decision, statement).await?))
}

#[utoipa::path(get, path = "/api/v1/agents/agents/{id}/status", tag = "agents", params(("id" = String, Path, description = "environmental-impact, economic-analysis, social-justice or technical-verification")), security(("bearer" = [])), responses((status = 200, body = canopy_agents::AgentStatus, description = "version, state, analyses running, last run, latency p50/p95, error rate, input contract, and the consensus model's versions with their rollout"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn agent_status(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<canopy_agents::AgentStatus>, ServingError> {
    caller.require(&state, Action::AnalyzeProposals).await?;
    let agents = service(&state)?;
    AgentId::parse(&id)
        .and_then(|agent| agents.status(agent))
        .map(Json)
        .ok_or(ServingError::NotFound { what: "agent" })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvokeBody {
    decision_id: Uuid,
}

/// An agent's vote as cast.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AgentVote {
    agent: AgentId,
    version: &'static str,
    #[schema(value_type = Object)]
    ballot: canopy_schemas::Ballot,
    /// The cast's receipt: the vote's position in the log and its leaf in the record.
    #[schema(value_type = Object)]
    receipt: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct InvokeAnswer {
    analysis: Analysis,
    votes: Vec<AgentVote>,
}

#[utoipa::path(post, path = "/api/v1/agents/invoke-consensus", tag = "agents", request_body = InvokeBody, security(("bearer" = [])), responses((status = 201, body = InvokeAnswer, description = "the analysis, and each agent's vote in the environmental-data component with its receipt; a re-run replaces the agents' earlier votes"), (status = 403, body = ErrorBody, description = "forbidden: operators and admins invoke; not_eligible: the decision's electorate leaves analysis agents out"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "decision_closed"), (status = 422, body = ErrorBody, description = "ineligible_component: the decision gives the environmental-data component no weight; outside_window")))]
pub(crate) async fn invoke_consensus(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<InvokeBody>,
) -> Result<(axum::http::StatusCode, Json<InvokeAnswer>), ServingError> {
    caller.require(&state, Action::InvokeAgents).await?;
    let decision =
        super::voting::known_decision(&state, DecisionId::from(body.decision_id)).await?;
    let roles = &decision.electorate.roles;
    if !roles.is_empty() && !roles.contains(&VoterRole::AnalysisAgent) {
        return Err(SchemaError::NotEligible {
            reason: "the decision's electorate does not include analysis agents".into(),
        }
        .into());
    }
    let statement = stored_statement(&state, decision.id).await?;
    let analysis = analysis(&state, decision.clone(), statement).await?;
    let mut votes = Vec::with_capacity(analysis.assessments.len());
    for assessment in &analysis.assessments {
        let ballot = ballot_for(&decision, &assessment.scores)?;
        let account = super::accounts::agent_account(&state, assessment.agent.as_str()).await?;
        let receipt = super::voting::cast_agent_vote(&state, decision.id, account, ballot).await?;
        state
            .audit(
                &format!("agent:{}", assessment.agent.as_str()),
                "agent_vote",
                json!({
                    "decision_id": decision.id,
                    "agent": assessment.agent,
                    "version": assessment.version,
                    "ballot": ballot,
                    "scores": assessment.scores,
                    "evidence": assessment.evidence,
                    "model_versions": analysis.versions,
                    "evidence_read_at": analysis.evidence_read_at,
                    "leaf_hash": receipt["leaf_hash"],
                    "position": receipt["position"],
                    "vote_id": receipt["vote_id"],
                    "invoked_by": caller.0.sub,
                }),
            )
            .await;
        votes.push(AgentVote {
            agent: assessment.agent,
            version: assessment.version,
            ballot,
            receipt,
        });
    }
    Ok((
        axum::http::StatusCode::CREATED,
        Json(InvokeAnswer { analysis, votes }),
    ))
}

#[utoipa::path(get, path = "/api/v1/agents/recommendations/{decision_id}", tag = "agents", params(("decision_id" = uuid::Uuid, Path, description = "decision id")), security(("bearer" = [])), responses((status = 200, body = Analysis, description = "the agents' assessments of the decision's impact statement, their consensus, and the predicted outcome given the votes so far"), (status = 404, body = ErrorBody, description = "not_found: the decision or its impact statement"), (status = 503, body = ErrorBody)))]
pub(crate) async fn recommendations(
    State(state): State<SharedState>,
    caller: Caller,
    Path(decision_id): Path<Uuid>,
) -> Result<Json<Analysis>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    let decision = super::voting::known_decision(&state, DecisionId::from(decision_id)).await?;
    let statement = stored_statement(&state, decision.id).await?;
    Ok(Json(analysis(&state, decision, statement).await?))
}
