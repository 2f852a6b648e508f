use std::net::SocketAddr;

use canopy_analytics::AnalyticsError;
use pgwire::error::{ErrorInfo, PgWireError};

/// What can go wrong running the server.
#[derive(Debug, thiserror::Error)]
pub enum SqlWireError {
    #[error("listening for PostgreSQL clients on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the PostgreSQL server's accept loop failed: {0}")]
    AcceptLoop(String),
}

impl SqlWireError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Listen { .. } => "sqlwire_listen",
            Self::AcceptLoop(_) => "sqlwire_accept_loop",
        }
    }
}

/// The lake's error as PostgreSQL's: its SQLSTATE, and the lake's stable code leading the
/// message so scripts can match on it.
pub(crate) fn lake_error(error: AnalyticsError) -> PgWireError {
    let code = error.code();
    let text = error.to_string();
    let sqlstate = match code {
        "sql_not_read_only" => "25006",
        "query_timeout" => "57014",
        "query_memory_exceeded" => "53200",
        "sql" => sql_state(&text),
        "lake_io" | "lake_store" => "58030",
        _ => "XX000",
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        sqlstate.to_string(),
        format!("{code}: {text}"),
    )))
}

/// DataFusion's errors are text; these are the cases clients commonly branch on.
fn sql_state(text: &str) -> &'static str {
    let lower = text.to_ascii_lowercase();
    if lower.contains("parsererror") || lower.contains("parser error") {
        "42601"
    } else if lower.contains("table") && lower.contains("not found") {
        "42P01"
    } else if lower.contains("no field named") {
        "42703"
    } else if lower.contains("divide by zero") {
        "22012"
    } else {
        "42000"
    }
}
