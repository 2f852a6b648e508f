use canopy_analytics::AnalyticsError;
use canopy_chain::ChainError;
use canopy_dataflow::DataflowError;
use canopy_ingest::IngestError;
use canopy_schemas::SchemaError;
use canopy_serving::ServingError;
use canopy_sqlwire::SqlWireError;

/// What can stop a node from starting, running its loops, or shutting down cleanly. The
/// parts' own errors keep their stable codes.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Boxed: the API's error is large, and every start-up step returns this type.
    #[error(transparent)]
    Serving(Box<ServingError>),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Dataflow(#[from] DataflowError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Analytics(#[from] AnalyticsError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    SqlPort(#[from] SqlWireError),
    #[error("TLS: {0}")]
    Tls(String),
    /// Taking, reading or restoring a backup.
    #[error("backup: {0}")]
    Backup(String),
    /// A backup's key did not open with the identity or passphrase given.
    #[error("backup: {0}")]
    BackupKey(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ServingError> for NodeError {
    fn from(error: ServingError) -> Self {
        Self::Serving(Box::new(error))
    }
}

impl NodeError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Serving(error) => error.code(),
            Self::Schema(error) => error.code(),
            Self::Dataflow(error) => error.code(),
            Self::Ingest(error) => error.code(),
            Self::Analytics(error) => error.code(),
            Self::Chain(error) => error.code(),
            Self::SqlPort(error) => error.code(),
            Self::Tls(_) => "tls",
            Self::Backup(_) => "backup",
            Self::BackupKey(_) => "backup_key",
            Self::Internal(_) => "internal",
        }
    }
}

/// Runs blocking start-up work (files, connections, thread starts) off the async threads.
pub(crate) async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, NodeError>
where
    T: Send + 'static,
    E: Into<NodeError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
        .map_err(Into::into)
}
