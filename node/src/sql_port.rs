//! The lake's SQL over the PostgreSQL protocol (`psql`, BI tools): the listener a node
//! starts beside the HTTP API when the lake is kept and `lake.pg_listen` is set.

use std::net::SocketAddr;
use std::sync::Arc;

use canopy_analytics::LakeQuery;
use canopy_serving::auth::{Action, verify_password};
use canopy_serving::store::MetadataStore;
use canopy_sqlwire::{Credentials, PgServer};

use crate::NodeError;

/// Listens on `listen` and serves `lake` to analysts and admins.
pub(crate) async fn start_sql_port(
    listen: SocketAddr,
    lake: impl LakeQuery + 'static,
    store: Arc<dyn MetadataStore>,
) -> Result<PgServer, NodeError> {
    Ok(PgServer::start(listen, lake, Arc::new(AnalystCredentials(store))).await?)
}

/// Who may sign in over the PostgreSQL protocol: an analyst or an admin, with the password
/// they use for the API (checked against its argon2 hash on a blocking thread).
struct AnalystCredentials(Arc<dyn MetadataStore>);

impl Credentials for AnalystCredentials {
    fn check<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let Ok(Some(record)) = self.0.user_by_username(user).await else {
                return false;
            };
            if !Action::QueryAnalytics.allowed(record.role) {
                return false;
            }
            let password = password.to_string();
            tokio::task::spawn_blocking(move || verify_password(&password, &record.password_hash))
                .await
                .unwrap_or(false)
        })
    }
}
