//! The lake's SQL over the PostgreSQL protocol (`psql`, BI tools): the listener a node
//! starts beside the HTTP API when the lake is kept and `lake.pg_listen` is set.
//!
//! ```text
//!  psql (user + SQL token as password) ──SCRAM──▶ PortCredentials
//!     admit:  SecretThrottle::begin (account, address) ─ waits ─▶ FATAL too_many_attempts
//!             user, role (analyst/admin now), live tokens ─▶ their verifiers
//!             anyone else ─▶ one made-up verifier under HMAC(port key, name): same exchange
//!     settle: right ─▶ attempt cleared, token's last use, audit sql_port_sign_in
//!             wrong  ─▶ attempt stays counted, audit sql_port_sign_in_failed, FATAL 28P01
//!     every statement ─▶ audit sql_port_query (its first 200 bytes)
//! ```
//!
//! The account password does not work here: an analyst signs in over HTTP in full (with
//! the second factor, if on) and asks for a token (`POST /api/v1/analytics/sql-tokens`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use canopy_analytics::LakeQuery;
use canopy_schemas::clock::{now_micros, unix_now};
use canopy_serving::auth::{Action, username_key};
use canopy_serving::state::AppState;
use canopy_serving::throttle::Attempt;
use canopy_sqlwire::scram::{Candidates, SCRAM_ITERATIONS};
use canopy_sqlwire::{Admission, Credentials, Pending, PgServer, PortOptions, Session, SignIn};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use crate::NodeError;
use crate::keys::load_or_generate_key;

/// The port key's file under `<data>/keys/`: it keys the made-up salts of unknown names.
pub const SQL_PORT_KEY_FILE: &str = "sql-port.key";
/// How much of a statement the audit trail keeps.
pub const AUDITED_SQL_BYTES: usize = 200;

/// How the port listens, beyond its address.
#[derive(Clone, Debug)]
pub struct SqlPortSettings {
    /// With TLS configured: still take clients that do not ask for it.
    pub allow_plaintext: bool,
    pub max_connections: usize,
    pub startup_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for SqlPortSettings {
    fn default() -> Self {
        let defaults = PortOptions::default();
        Self {
            allow_plaintext: false,
            max_connections: defaults.max_connections,
            startup_timeout: defaults.startup_timeout,
            idle_timeout: defaults.idle_timeout,
        }
    }
}

/// Listens on `listen` and serves `lake` to analysts and admins holding an SQL token.
pub(crate) async fn start_sql_port(
    listen: SocketAddr,
    lake: impl LakeQuery + 'static,
    state: Arc<AppState>,
    settings: &SqlPortSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    data_dir: &Path,
) -> Result<PgServer, NodeError> {
    let key_path = data_dir.join("keys").join(SQL_PORT_KEY_FILE);
    let port_key = crate::error::blocking(move || load_or_generate_key(&key_path)).await?;
    let options = PortOptions {
        tls,
        require_tls: !settings.allow_plaintext,
        max_connections: settings.max_connections,
        startup_timeout: settings.startup_timeout,
        idle_timeout: settings.idle_timeout,
    };
    let credentials = Arc::new(PortCredentials { state, port_key });
    Ok(PgServer::start(listen, lake, credentials, options).await?)
}

/// Who may sign in over the PostgreSQL protocol: an analyst or an admin, with one of their
/// live SQL tokens.
struct PortCredentials {
    state: Arc<AppState>,
    port_key: [u8; 32],
}

/// What `admit` hands `settle`: the counted attempt and whom it was for.
struct PendingSignIn {
    attempt: Attempt,
    user: Option<Uuid>,
}

impl PortCredentials {
    /// A salt for a name that has no tokens: stable (asking twice shows the same one) and
    /// unlinkable to the name without the port key.
    fn made_up_salt(&self, name: &str) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.port_key).expect("HMAC takes a key of any size");
        mac.update(b"canopy/sql-port/salt/v1\0");
        mac.update(name.as_bytes());
        mac.finalize().into_bytes()[..16].to_vec()
    }

    async fn audit(&self, actor: &str, action: &str, detail: serde_json::Value) {
        if let Err(error) = self
            .state
            .store
            .append_audit(actor, action, &detail.to_string(), now_micros())
            .await
        {
            tracing::error!(%error, action, "could not write the audit trail");
        }
    }

    async fn pseudonym(&self, user: Uuid) -> String {
        match self.state.store.user_pseudonym(user).await {
            Ok(pseudonym) => pseudonym,
            Err(error) => {
                tracing::error!(%error, "no pseudonym for the audit trail");
                canopy_serving::store::UNKNOWN_USER_PSEUDONYM.to_owned()
            }
        }
    }

    /// The live tokens of the account behind `name`, if it may query the lake. The same
    /// queries run whoever asks, so the time does not tell accounts apart.
    async fn verifiers(&self, name: &str) -> (Option<Uuid>, Candidates<String>) {
        let store = &self.state.store;
        let user = store.user_by_username(name).await.ok().flatten();
        let eligible = user
            .as_ref()
            .filter(|user| Action::QueryAnalytics.allowed(user.role));
        let owner = eligible.map_or(Uuid::nil(), |user| user.id);
        let tokens = store
            .sql_tokens(owner, unix_now() as i64)
            .await
            .unwrap_or_default();
        let salt = tokens.first().map(|token| token.salt.clone());
        let iterations = tokens.first().map(|token| token.iterations);
        let verifiers: Vec<(String, [u8; 32], [u8; 32])> = tokens
            .iter()
            .filter(|token| Some(&token.salt) == salt.as_ref())
            .filter(|token| Some(token.iterations) == iterations)
            .filter_map(|token| {
                Some((
                    token.id.to_string(),
                    token.stored_key.clone().try_into().ok()?,
                    token.server_key.clone().try_into().ok()?,
                ))
            })
            .collect();
        match (eligible, salt, iterations) {
            (Some(user), Some(salt), Some(iterations)) if !verifiers.is_empty() => (
                Some(user.id),
                Candidates {
                    salt,
                    iterations,
                    verifiers,
                },
            ),
            _ => (
                user.map(|user| user.id),
                Candidates {
                    salt: self.made_up_salt(&username_key(name)),
                    iterations: SCRAM_ITERATIONS,
                    // Keys no proof can match: a random StoredKey has no known preimage.
                    verifiers: vec![(String::new(), rand::random(), rand::random())],
                },
            ),
        }
    }
}

#[async_trait]
impl Credentials for PortCredentials {
    async fn admit(&self, attempt: &SignIn) -> Admission {
        let throttled = self
            .state
            .throttle
            .begin(&username_key(&attempt.user), Some(attempt.peer.ip()))
            .await;
        let counted = match throttled {
            Ok(counted) => counted,
            Err(retry) => {
                return Admission::Throttled {
                    retry_after_s: retry.seconds().max(1),
                };
            }
        };
        let (user, candidates) = self.verifiers(&attempt.user).await;
        Admission::Verify {
            candidates,
            pending: Box::new(PendingSignIn {
                attempt: counted,
                user,
            }),
        }
    }

    async fn settle(
        &self,
        attempt: &SignIn,
        pending: Pending,
        token: Option<&str>,
    ) -> Option<String> {
        let Ok(pending) = pending.downcast::<PendingSignIn>() else {
            return None;
        };
        let PendingSignIn {
            attempt: counted,
            user,
        } = *pending;
        let token = token.and_then(|token| Uuid::parse_str(token).ok());
        let address = attempt.peer.ip().to_string();
        match (user, token) {
            (Some(user), Some(token)) => {
                counted.succeeded().await;
                if let Err(error) = self
                    .state
                    .store
                    .touch_sql_token(token, unix_now() as i64)
                    .await
                {
                    tracing::warn!(%error, "could not record an SQL token's use");
                }
                let pseudonym = self.pseudonym(user).await;
                let detail = json!({ "token": token, "address": address, "tls": attempt.tls });
                self.audit(&pseudonym, "sql_port_sign_in", detail).await;
                Some(pseudonym)
            }
            (user, _) => {
                counted.failed();
                let detail = json!({ "address": address, "tls": attempt.tls });
                let actor = match user {
                    Some(user) => self.pseudonym(user).await,
                    None => "anonymous".to_owned(),
                };
                self.audit(&actor, "sql_port_sign_in_failed", detail).await;
                None
            }
        }
    }

    async fn statement(&self, session: &Session, sql: &str) {
        let cut = sql.floor_char_boundary(AUDITED_SQL_BYTES);
        let detail = json!({
            "sql": &sql[..cut],
            "truncated": cut < sql.len(),
            "token": session.token,
            "address": session.sign_in.peer.ip().to_string(),
        });
        self.audit(&session.account, "sql_port_query", detail).await;
    }
}
