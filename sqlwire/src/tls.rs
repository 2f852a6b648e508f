//! TLS for the port: a certificate chain and key in PEM files (the same ones the HTTP
//! listener uses), read again when either file changes, so a renewed certificate is served
//! from the next connection on without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::SqlWireError;

/// ALPN name PostgreSQL 17 clients send (and require for a direct TLS connection).
pub(crate) const POSTGRESQL_ALPN: &[u8] = b"postgresql";

/// Where the certificate chain and its private key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the port's TLS comes from.
#[derive(Clone, Debug)]
pub enum PortTls {
    /// PEM files, read again when they change.
    Files(TlsFiles),
    /// A configuration the caller keeps current (a node's, reloaded on SIGHUP, shared with
    /// its HTTP listener). Its ALPN list should hold `postgresql`.
    Config(Arc<ServerConfig>),
}

/// The acceptor of the files as they were when last read, or the caller's.
pub(crate) enum TlsSource {
    Files {
        files: TlsFiles,
        loaded: Mutex<(Option<SystemTime>, Option<SystemTime>, TlsAcceptor)>,
    },
    Config(TlsAcceptor),
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(files: &TlsFiles) -> Result<TlsAcceptor, SqlWireError> {
    let tls_error = |reason: String| SqlWireError::Tls {
        cert: files.cert.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_error("no certificate in the file".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| SqlWireError::Tls {
        cert: files.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(e.to_string()))?;
    config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsSource {
    /// Reads the files now, so a bad certificate fails the start rather than a connection.
    pub(crate) fn open(tls: PortTls) -> Result<Self, SqlWireError> {
        let files = match tls {
            PortTls::Config(config) => return Ok(Self::Config(TlsAcceptor::from(config))),
            PortTls::Files(files) => files,
        };
        let acceptor = load(&files)?;
        let loaded = (modified(&files.cert), modified(&files.key), acceptor);
        Ok(Self::Files {
            files,
            loaded: Mutex::new(loaded),
        })
    }

    /// The current acceptor; files are re-read when one changed. A change that does not
    /// load (a half-written file) keeps the previous certificate and says so.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let (files, loaded) = match self {
            Self::Config(acceptor) => return acceptor.clone(),
            Self::Files { files, loaded } => (files, loaded),
        };
        let cert = modified(&files.cert);
        let key = modified(&files.key);
        let mut loaded = loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if (cert, key) != (loaded.0, loaded.1) {
            match load(files) {
                Ok(acceptor) => *loaded = (cert, key, acceptor),
                Err(error) => {
                    tracing::warn!(%error, "the changed TLS files do not load; serving the previous ones");
                }
            }
        }
        loaded.2.clone()
    }
}
