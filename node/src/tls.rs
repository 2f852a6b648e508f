//! TLS for the node's listeners (the HTTP API and the PostgreSQL port): one certificate and
//! key (PEM files, `tls.cert` / `tls.key`), read at start and again on SIGHUP.
//!
//! ```text
//!  TlsFiles::load ──▶ ReloadableTls ──server_config()──▶ Arc<rustls::ServerConfig> (per listener)
//!                          ▲   the configs resolve the certificate through the handle at
//!  SIGHUP ──reload()───────┘   each handshake: a reload serves new connections the new
//!                              certificate; open connections keep theirs
//! ```
//!
//! rustls with the *ring* provider (no C toolchain beyond ring's own), TLS 1.2 and 1.3.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::NodeError;

/// Where the certificate chain and its private key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(files: &TlsFiles, reason: impl std::fmt::Display) -> NodeError {
    NodeError::Tls(format!(
        "{} / {}: {reason}",
        files.cert.display(),
        files.key.display()
    ))
}

impl TlsFiles {
    /// Reads and checks both files (the key must match the leaf certificate).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, NodeError> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| tls_error(self, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(self, e))?;
        if chain.is_empty() {
            return Err(tls_error(self, "the certificate file holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| tls_error(self, e))?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider()).map_err(|e| tls_error(self, e))?;
        Ok(Arc::new(certified))
    }

    /// Loads the files into a handle the listeners share and SIGHUP reloads.
    pub fn load(&self) -> Result<ReloadableTls, NodeError> {
        let current = self.certified_key()?;
        Ok(ReloadableTls {
            files: self.clone(),
            current: Arc::new(CurrentCert(RwLock::new(current))),
        })
    }
}

/// The certificate in use, swapped whole by a reload.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// The loaded certificate, shared by every listener of the node.
#[derive(Clone, Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: Arc<CurrentCert>,
}

impl ReloadableTls {
    /// A server configuration that always presents the current certificate; `alpn` is what
    /// the listener speaks (`[b"http/1.1"]` for the API, none for PostgreSQL).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, NodeError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&self.files, e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reads the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), NodeError> {
        let fresh = self.files.certified_key()?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// Reloads on every SIGHUP until the task is aborted.
    pub fn reload_on_sighup(&self) -> Result<tokio::task::JoinHandle<()>, NodeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())
            .map_err(|e| NodeError::Internal(format!("listening for SIGHUP: {e}")))?;
        let tls = self.clone();
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let files = tls.files.clone();
                let reloading = tls.clone();
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(())) => {
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(Err(error)) => {
                        tracing::error!(%error, "TLS certificate not reloaded; the previous one stays")
                    }
                    Err(error) => tracing::error!(%error, "TLS reload failed"),
                }
            }
        }))
    }
}

/// Makes ring rustls's provider for this process: reqwest's TLS (an `https://` EVM node, an
/// OTLP collector, `canopy verify <url>`) has none of its own in this build and panics
/// without one. Call before building an HTTP client; calling again changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
