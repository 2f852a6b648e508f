//! Fixtures the workspace's tests share, so each test states only what it is about.
//!
//! - [`decision`]: an open, three-option decision with the default component weights.
//! - [`vote`], [`expert_vote`], [`logged`]: votes as the log holds them.
//! - [`TestDatabase`]: a PostgreSQL database of the test's own on the real server that
//!   `scripts/test` starts, dropped with the value.

use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, LoggedVote, Method, Vote, VoteId, VoterId,
    VoterSalt, Weight,
};
use sqlx::Connection;

/// Decision `n`: options a, b, c, open from the epoch forever, quorum 10, in `region`.
pub fn decision_in(n: u128, region: &str) -> Decision {
    Decision {
        electorate: Default::default(),
        credits: 0,
        id: DecisionId(n),
        title: format!("decision {n}"),
        description: String::new(),
        region: region.into(),
        options: vec!["a".into(), "b".into(), "c".into()],
        opens_at: 0,
        closes_at: i64::MAX,
        weights: ComponentWeights::DEFAULT,
        quorum: 10,
        method: Method::SingleChoice,
    }
}

/// Decision `n` in region `r` (see [`decision_in`]).
pub fn decision(n: u128) -> Decision {
    decision_in(n, "r")
}

/// Vote `id` of `voter` on `decision` for `option`: democratic, weight one, cast at 1.
/// Tests that need another time or id say so with `Vote { cast_at: …, ..vote(…) }`.
pub fn vote(id: u128, decision: u128, voter: u128, option: u16) -> Vote {
    Vote {
        vote_id: VoteId(id),
        decision_id: DecisionId(decision),
        voter_id: VoterId(voter),
        ballot: canopy_schemas::Ballot::single_choice(option).unwrap(),
        component: Component::Democratic,
        weight: Weight::ONE,
        cast_at: 1,
    }
}

/// The same vote as [`vote`], cast in the expert component with `weight`.
pub fn expert_vote(id: u128, decision: u128, voter: u128, option: u16, weight: Weight) -> Vote {
    Vote {
        component: Component::Expert,
        weight,
        ..vote(id, decision, voter, option)
    }
}

/// `vote` as the log holds it: with the voter's commitment under the salt of 32 `salt` bytes.
pub fn logged(vote: Vote, salt: u8) -> LoggedVote {
    LoggedVote::new(vote, &VoterSalt([salt; 32]))
}

/// The server the test setup (scripts/test) makes sure is running.
pub fn postgres_admin_url() -> String {
    std::env::var("CANOPY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of this test's own, dropped when the value is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin = postgres_admin_url();
        let name = format!("canopy_test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} is not reachable ({e}); scripts/test starts it")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (postgres_admin_url(), self.name.clone());
        // Drop may run inside a runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut connection)
                    .await;
                }
            });
        })
        .join();
    }
}

/// The migrations of `dialect` before `before`, as one script that also records them as
/// applied: a store as an older release left it.
pub fn migrations_before(dialect: &str, before: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(dialect);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.as_str() < before)
        .collect();
    names.sort();
    let mut script = String::from(
        "CREATE TABLE canopy_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL);\n",
    );
    for name in &names {
        script += &std::fs::read_to_string(dir.join(name)).unwrap();
        script += ";\n";
        let stem = name.trim_end_matches(".sql");
        script +=
            &format!("INSERT INTO canopy_migrations (name, applied_at) VALUES ('{stem}', 0);\n");
    }
    script
}

/// An HTTP client for a test; reqwest's TLS needs rustls's provider installed first.
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("an HTTP client builds")
}

/// [`http_client`]'s builder, for a test that sets timeouts or pools.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
