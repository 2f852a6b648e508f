//! Sign-in: SCRAM-SHA-256 against verifiers the node keeps (never a cleartext password),
//! with every outcome reported to [`Credentials`] so the node can throttle and audit it.
//!
//! ```text
//!  Startup ──▶ Credentials::admit ──▶ throttled: FATAL 28P01 too_many_attempts
//!                                └─▶ AuthenticationSASL [SCRAM-SHA-256]
//!  SASLInitialResponse (client-first) ──▶ AuthenticationSASLContinue (server-first)
//!  SASLResponse (client-final) ──▶ proof checked against every candidate verifier
//!      ├─ match: Credentials::settle(Some(token)) ──▶ AuthenticationSASLFinal, Ok, …
//!      └─ none:  Credentials::settle(None) ──▶ FATAL 28P01 password authentication failed
//! ```
//!
//! An unknown user, or one who may not query, gets candidates too (the node makes them up
//! from a keyed hash of the name), so the exchange, its messages and its failure are the
//! same for every name.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionManager, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::scram::{Candidates, ClientFirst, Exchange, MECHANISM, ScramError};

/// A connection asking to sign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    /// The user name of the startup message, as the client sent it.
    pub user: String,
    pub peer: SocketAddr,
    /// Whether the connection is under TLS.
    pub tls: bool,
}

/// A signed-in connection: who, and with which of their tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub sign_in: SignIn,
    /// The id of the token whose verifier matched.
    pub token: String,
    /// What [`Credentials::settle`] named the account (the node: its audit pseudonym).
    pub account: String,
}

/// Whatever the node carries from [`Credentials::admit`] to [`Credentials::settle`] (its
/// throttle's counted attempt); dropped unsettled when the client leaves mid-exchange.
pub type Pending = Box<dyn std::any::Any + Send + Sync>;

/// What the node answers a sign-in attempt with.
pub enum Admission {
    /// Run the exchange against these (made-up ones for an unknown user).
    Verify {
        candidates: Candidates<String>,
        pending: Pending,
    },
    /// Too many failures lately for this user or address: refused without an exchange.
    Throttled { retry_after_s: u64 },
}

/// Who may connect, and what the node hears of it.
#[async_trait]
pub trait Credentials: Send + Sync + 'static {
    /// The verifiers `attempt.user` may sign in with, or a refusal while throttled.
    async fn admit(&self, attempt: &SignIn) -> Admission;
    /// The exchange's outcome: the token whose verifier matched, or `None` (wrong proof,
    /// broken protocol). `Some(account)` lets the session in, named `account`; `None`
    /// refuses it after all.
    async fn settle(
        &self,
        attempt: &SignIn,
        pending: Pending,
        token: Option<&str>,
    ) -> Option<String>;
    /// A statement a session is about to run.
    async fn statement(&self, session: &Session, sql: &str);
}

/// Where a connection is in its exchange (kept in the session's extensions).
enum Phase {
    AwaitingFirst(Candidates<String>, Pending),
    AwaitingFinal(Exchange<String>, Pending),
    Done,
}

type PhaseSlot = Mutex<Option<Phase>>;

/// Runs SCRAM-SHA-256 and hands every outcome to [`Credentials`].
pub(crate) struct ScramStartup {
    pub(crate) credentials: Arc<dyn Credentials>,
    pub(crate) parameters: DefaultServerParameterProvider,
    pub(crate) pids: RandomPidSecretKeyGenerator,
    pub(crate) connections: Arc<ConnectionManager>,
    /// Refuse connections that did not negotiate TLS.
    pub(crate) require_tls: bool,
}

fn sign_in_of<C: ClientInfo>(client: &C) -> SignIn {
    SignIn {
        user: client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default(),
        peer: client.socket_addr(),
        tls: client.is_secure(),
    }
}

fn take_phase<C: ClientInfo>(client: &C) -> Option<Phase> {
    let slot = client.session_extensions().get::<PhaseSlot>()?;
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    slot.replace(Phase::Done)
}

fn put_phase<C: ClientInfo>(client: &C, phase: Phase) {
    client
        .session_extensions()
        .insert::<PhaseSlot>(Mutex::new(Some(phase)));
}

#[async_trait]
impl StartupHandler for ScramStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if !matches!(client.state(), PgWireConnectionState::AwaitingStartup) {
                    return Err(fatal("08P01", "unexpected startup message".to_owned()));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if client.metadata().get(METADATA_USER).is_none() {
                    return Err(PgWireError::UserNameRequired);
                }
                if self.require_tls && !client.is_secure() {
                    // PostgreSQL's words for a hostssl-only pg_hba.
                    return Err(fatal(
                        "28000",
                        "TLS is required: connect with sslmode=require".to_owned(),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let attempt = sign_in_of(client);
                match self.credentials.admit(&attempt).await {
                    Admission::Throttled { retry_after_s } => {
                        return Err(fatal(
                            "28P01",
                            format!(
                                "too_many_attempts: too many failed sign-ins; try again in {retry_after_s} s"
                            ),
                        ));
                    }
                    Admission::Verify {
                        candidates,
                        pending,
                    } => put_phase(client, Phase::AwaitingFirst(candidates, pending)),
                }
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![MECHANISM.to_owned()],
                    )))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                if !matches!(
                    client.state(),
                    PgWireConnectionState::AuthenticationInProgress
                ) {
                    return Err(PgWireError::NoAuthenticationInProgress);
                }
                let attempt = sign_in_of(client);
                match take_phase(client) {
                    Some(Phase::AwaitingFirst(candidates, pending)) => {
                        let first = sasl_initial_response(message)
                            .ok_or(ScramError::Malformed("not a SCRAM-SHA-256 first message"))
                            .and_then(|data| ClientFirst::parse(&data));
                        let first = match first {
                            Ok(first) => first,
                            Err(_) => return Err(self.refuse(&attempt, pending).await),
                        };
                        let (exchange, server_first) = Exchange::start(first, candidates);
                        put_phase(client, Phase::AwaitingFinal(exchange, pending));
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(Bytes::from(server_first)),
                            ))
                            .await?;
                    }
                    Some(Phase::AwaitingFinal(exchange, pending)) => {
                        let outcome = message
                            .into_sasl_response()
                            .map_err(|_| ScramError::Malformed("not a SASL response"))
                            .and_then(|last| exchange.finish(&last.data));
                        let (token, server_final) = match outcome {
                            Ok(done) => done,
                            Err(_) => return Err(self.refuse(&attempt, pending).await),
                        };
                        let settled = self.credentials.settle(&attempt, pending, Some(&token));
                        let Some(account) = settled.await else {
                            return Err(authentication_failed(&attempt.user));
                        };
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(Bytes::from(server_final)),
                            ))
                            .await?;
                        client.session_extensions().insert(Session {
                            sign_in: attempt,
                            token,
                            account,
                        });
                        // A pid and key per connection let a client cancel its running query.
                        let (pid, key) = self.pids.generate(&*client);
                        client.set_pid_and_secret_key(pid, key.clone());
                        let (handle, guard) = self.connections.register(pid, key);
                        client.session_extensions().insert(handle);
                        client.session_extensions().insert(guard);
                        finish_authentication(client, &self.parameters).await?;
                    }
                    // A password message out of turn: the exchange is over, and failed.
                    _ => return Err(authentication_failed(&attempt.user)),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl ScramStartup {
    /// Reports the failure and answers it as PostgreSQL does.
    async fn refuse(&self, attempt: &SignIn, pending: Pending) -> PgWireError {
        self.credentials.settle(attempt, pending, None).await;
        authentication_failed(&attempt.user)
    }
}

/// The data of a `SASLInitialResponse` naming SCRAM-SHA-256, parsed here: pgwire's own
/// decoder (0.42.1) panics on a body too short for its length field, and this body comes
/// from a client that has not signed in.
fn sasl_initial_response(message: PasswordMessageFamily) -> Option<Bytes> {
    let PasswordMessageFamily::Raw(body) = message else {
        return None;
    };
    let nul = body.iter().position(|&b| b == 0)?;
    if &body[..nul] != MECHANISM.as_bytes() {
        return None;
    }
    let rest = &body[nul + 1..];
    let length = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = rest.get(4..)?;
    (usize::try_from(length).ok()? == data.len()).then(|| Bytes::copy_from_slice(data))
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// PostgreSQL's own words and code (FATAL ends the connection), the same for every cause.
fn authentication_failed(user: &str) -> PgWireError {
    fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}
