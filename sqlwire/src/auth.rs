//! Password sign-in: the client sends its password in clear (loopback or TLS in front), and
//! the node's user store checks it against the stored hash.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
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
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

/// Who may connect: the node checks an analyst's password against its user store.
pub trait Credentials: Send + Sync + 'static {
    /// Whether `password` is `user`'s. Slow checks (argon2) belong on a blocking thread.
    fn check<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// Asks for a cleartext password and hands it to [`Credentials`]. pgwire's own cleartext
/// handler is built around comparing with a stored cleartext password; this one reports a
/// failure exactly as PostgreSQL does, which clients and people recognise.
pub(crate) struct PasswordStartup {
    pub(crate) credentials: Arc<dyn Credentials>,
    pub(crate) parameters: DefaultServerParameterProvider,
    pub(crate) pids: RandomPidSecretKeyGenerator,
    pub(crate) connections: Arc<ConnectionManager>,
}

#[async_trait]
impl StartupHandler for PasswordStartup {
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
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if client.metadata().get(METADATA_USER).is_none() {
                    return Err(PgWireError::UserNameRequired);
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                if !matches!(
                    client.state(),
                    PgWireConnectionState::AuthenticationInProgress
                ) {
                    return Err(PgWireError::NoAuthenticationInProgress);
                }
                let password = message.into_password()?.password;
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                if !self.credentials.check(&user, &password).await {
                    return Err(authentication_failed(&user));
                }
                // A pid and key per connection let a client cancel its running query.
                let (pid, key) = self.pids.generate(&*client);
                client.set_pid_and_secret_key(pid, key.clone());
                let (handle, guard) = self.connections.register(pid, key);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// PostgreSQL's own words and code (FATAL ends the connection).
fn authentication_failed(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        "28P01".to_owned(),
        format!("password authentication failed for user \"{user}\""),
    )))
}
