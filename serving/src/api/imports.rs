//! `POST /api/v1/data/import`: external data (NOAA daily weather, World Bank indicators,
//! OpenStreetMap boundaries and land use) from files in their publishers' formats into the
//! lake's `weather_daily`, `indicators` and `regions` tables: all or nothing, unless told
//! to skip bad rows; the same file twice is imported once.

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use canopy_analytics::{AnalyticsError, ExternalSource, ImportOptions, RegionMap};
use serde::Deserialize;
use serde_json::json;

use super::extract::{Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;

/// The largest file an import takes.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    /// `noaa` (GHCN-Daily by-station CSV, or CDO daily summaries CSV), `worldbank` (bulk
    /// CSV or API JSON) or `osm` (GeoJSON).
    source: String,
    /// The source's regions as Canopy's: `USW00094728:north,KEN:east` (station ids, ISO3
    /// country codes, boundaries' ISO 3166-2 codes or names). Rows of unmapped regions are
    /// kept with no region and counted.
    #[serde(default)]
    regions: Option<String>,
    /// Import the good rows and report the bad ones, rather than refuse the file.
    #[serde(default)]
    skip_invalid: bool,
}

fn region_map(inline: Option<&str>) -> Result<RegionMap, ServingError> {
    let mut map = RegionMap::new();
    for pair in inline
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (source, region) = pair
            .rsplit_once(':')
            .ok_or_else(|| ServingError::BadParameter {
                code: "bad_region_map",
                message: format!("{pair:?} is not source_region:region"),
            })?;
        map.insert(source, region)
            .map_err(|e| ServingError::BadParameter {
                code: "bad_region_map",
                message: e.to_string(),
            })?;
    }
    Ok(map)
}

#[utoipa::path(post, path = "/api/v1/data/import", tag = "data", params(ImportQuery), request_body(content = String, description = "the file as its publisher gives it, up to 64 MiB"), security(("bearer" = [])), responses((status = 200, description = "the import's report: rows read, imported, unmapped, skipped, the file written (already_imported: the same file came before)"), (status = 403, body = ErrorBody, description = "forbidden: operators and admins import"), (status = 409, body = ErrorBody, description = "import_in_progress: another import is running on this node (Retry-After)"), (status = 422, body = ErrorBody, description = "import_refused: bad rows, each listed with its line and code, and nothing written; import_format: not the format at all"), (status = 503, body = ErrorBody, description = "lake_not_here")))]
pub(crate) async fn import_data(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<ImportQuery>,
    request: Request,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::ImportData).await?;
    let source: ExternalSource = query
        .source
        .parse()
        .map_err(|_| ServingError::BadParameter {
            code: "unknown_source",
            message: format!("source {:?} is not noaa, worldbank or osm", query.source),
        })?;
    let map = region_map(query.regions.as_deref())?;
    let analytics = state.analytics.as_ref().ok_or(ServingError::LakeNotHere)?;
    let lake = analytics.imports.clone().ok_or(ServingError::LakeNotHere)?;
    // One import at a time, decided before the body is read: a second one is refused at
    // once rather than holding up to 64 MiB in memory while it waits its turn.
    let _one_at_a_time = analytics
        .importing
        .try_lock()
        .map_err(|_| ServingError::ImportInProgress { retry_after_s: 5 })?;
    let bytes = axum::body::to_bytes(request.into_body(), MAX_IMPORT_BYTES)
        .await
        .map_err(|_| ServingError::BodyTooLarge {
            limit: MAX_IMPORT_BYTES,
        })?;
    let options = ImportOptions {
        skip_invalid: query.skip_invalid,
    };
    let imported = tokio::task::spawn_blocking(move || {
        canopy_analytics::import_external(&lake, source, &bytes, &map, &options, &mut |rows| {
            tracing::info!(source = source.as_str(), rows, "importing");
        })
    })
    .await
    .map_err(|e| ServingError::Internal(e.to_string()))?;
    let report = match imported {
        Ok(report) => report,
        Err(AnalyticsError::ImportRefused { report }) => {
            let body = json!({
                "error": {
                    "code": "import_refused",
                    "message": format!("{} rows are not valid: nothing was imported", report.errors_total),
                },
                "report": report,
            });
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
        }
        Err(error) => return Err(error.into()),
    };
    if let Some(agents) = &state.agents {
        agents.forget_evidence();
    }
    state
        .audit_as_user(
            caller.0.sub,
            "import_data",
            json!({ "source": report.source, "import_id": report.import_id, "rows": report.rows_imported, "already_imported": report.already_imported }),
        )
        .await;
    Ok(Json(report).into_response())
}
