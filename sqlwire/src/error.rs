use std::net::SocketAddr;

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
