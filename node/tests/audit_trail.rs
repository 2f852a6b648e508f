//! The audit trail against someone who can write the node's database (issue 16): rows deleted
//! and the chain recomputed, a row's detail altered, are named by the trail check as the
//! first bad entry; the trail's head is anchored with the record; TOTP secrets are sealed in
//! the database and still sign in after a restart. On SQLite and on a real PostgreSQL.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use canopy_node::NodeConfig;
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use canopy_serving::store::AuditRecord;
use canopy_testkit::TestDatabase;
use common::api::{LOGIN, PASSWORD, TestNode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

const TRAIL: &str = "/api/v1/audit/trail";

/// Where a test node keeps its metadata: the SQLite file in its data directory, or a
/// PostgreSQL database of the test's own.
enum Metadata {
    Sqlite,
    Postgres(TestDatabase),
}

impl Metadata {
    fn url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::Postgres(database) => Some(database.url.clone()),
        }
    }
}

/// The node's configuration: its metadata store, anchoring five times a second.
fn configure(config: &mut NodeConfig, metadata: &Metadata) {
    config.database_url = metadata.url();
    config.record.anchor.interval = Duration::from_millis(200);
    config.sensors.enabled = false;
}

async fn start(metadata: &Metadata) -> TestNode {
    TestNode::start_with(ApiConfig::default(), |config| configure(config, metadata)).await
}

/// Stops `node` and starts it again on the same data directory and database.
async fn restart(node: TestNode, metadata: &Metadata) -> TestNode {
    tamper_while_stopped(node, metadata, |_| async {}).await
}

/// Stops `node`, lets `tamper` loose on its database, and starts the node again.
async fn tamper_while_stopped<Tamper, Done>(
    node: TestNode,
    metadata: &Metadata,
    tamper: Tamper,
) -> TestNode
where
    Tamper: FnOnce(Intruder) -> Done,
    Done: std::future::Future<Output = ()>,
{
    let TestNode {
        node: running,
        client,
        dir,
        ..
    } = node;
    running.shutdown().await.unwrap();
    tamper(Intruder::connect(dir.path(), metadata).await).await;
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    configure(&mut config, metadata);
    let restarted = canopy_node::Node::start(config).await.unwrap();
    TestNode {
        base: format!("http://{}", restarted.addr),
        node: restarted,
        client,
        dir,
    }
}

/// Someone with write access to the database and without the node's keys.
enum Intruder {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the intruder holds.
macro_rules! on_pool {
    ($intruder:expr, $pool:ident => $body:expr) => {
        match $intruder {
            Intruder::Sqlite($pool) => $body,
            Intruder::Postgres($pool) => $body,
        }
    };
}

impl Intruder {
    async fn connect(dir: &Path, metadata: &Metadata) -> Intruder {
        match metadata {
            Metadata::Sqlite => {
                let url = format!("sqlite://{}", dir.join("canopy.db").display());
                Intruder::Sqlite(sqlx::SqlitePool::connect(&url).await.unwrap())
            }
            Metadata::Postgres(database) => {
                Intruder::Postgres(sqlx::PgPool::connect(&database.url).await.unwrap())
            }
        }
    }

    /// Drops the triggers that keep the trail append-only.
    async fn drop_triggers(&self) {
        let drop_triggers = match self {
            Intruder::Sqlite(_) => {
                "DROP TRIGGER audit_trail_no_update; DROP TRIGGER audit_trail_no_delete;"
            }
            Intruder::Postgres(_) => {
                "DROP TRIGGER audit_trail_no_update_or_delete ON audit_trail; \
                 DROP TRIGGER audit_trail_no_truncate ON audit_trail;"
            }
        };
        on_pool!(self, pool => {
            sqlx::raw_sql(drop_triggers).execute(pool).await.unwrap();
        });
    }

    async fn execute(&self, sql: &'static str) {
        on_pool!(self, pool => {
            sqlx::query(sql).execute(pool).await.unwrap();
        });
    }

    async fn trail(&self) -> Vec<AuditRecord> {
        let sql = "SELECT seq, at, actor, action, detail, prev_hash, hash, hmac FROM audit_trail ORDER BY seq";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
            rows.iter()
                .map(|row| AuditRecord {
                    seq: row.get("seq"),
                    at: row.get("at"),
                    actor: row.get("actor"),
                    action: row.get("action"),
                    detail: row.get("detail"),
                    prev_hash: row.get("prev_hash"),
                    hash: row.get("hash"),
                    hmac: row.get("hmac"),
                })
                .collect::<Vec<_>>()
        })
    }

    /// Writes `entries` as the whole trail.
    async fn replace_trail(&self, entries: &[AuditRecord]) {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM audit_trail").execute(pool).await.unwrap();
            for entry in entries {
                sqlx::query("INSERT INTO audit_trail (seq, at, actor, action, detail, prev_hash, hash, hmac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(entry.seq)
                    .bind(entry.at)
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.detail)
                    .bind(&entry.prev_hash)
                    .bind(&entry.hash)
                    .bind(&entry.hmac)
                    .execute(pool)
                    .await
                    .unwrap();
            }
        });
    }

    /// A user's TOTP secret columns: (in the clear, sealed).
    async fn totp_columns(&self, user: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let sql = "SELECT totp_secret, totp_secret_sealed FROM users WHERE username = $1";
        on_pool!(self, pool => {
            let row = sqlx::query(sql).bind(user).fetch_one(pool).await.unwrap();
            (row.get("totp_secret"), row.get("totp_secret_sealed"))
        })
    }
}

/// `entries` renumbered from 1 and their chain recomputed, as someone without the audit key
/// would after deleting rows: each row keeps the HMAC it had.
fn renumbered(entries: Vec<AuditRecord>) -> Vec<AuditRecord> {
    let mut prev = canopy_serving::store::AUDIT_GENESIS.to_string();
    (1..)
        .zip(entries)
        .map(|(seq, entry)| {
            let hash = AuditRecord::compute_hash(
                &prev,
                seq,
                entry.at,
                &entry.actor,
                &entry.action,
                &entry.detail,
            );
            AuditRecord {
                seq,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
                ..entry
            }
        })
        .collect()
}

/// A trail with some of everything an intruder would like gone: sign-ins, a verification.
async fn busy_trail(node: &TestNode) -> String {
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    for name in ["cora", "dana", "emil"] {
        let user = node.register(name).await;
        node.login(name).await;
        if name == "dana" {
            let verification =
                json!({ "user_id": user, "role": "expert", "weight": 2.0, "field": "hydrology" });
            node.post_expecting(
                "/api/v1/auth/verify-expert",
                Some(&admin),
                verification,
                StatusCode::OK,
            )
            .await;
        }
    }
    admin
}

/// The sequence number of the first entry of a trail page recording `action`.
fn first_of(trail: &Value, action: &str) -> i64 {
    trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {trail}"))["seq"]
        .as_i64()
        .unwrap()
}

/// Polls the trail until its head (as of now) is anchored; returns the whole trail page.
async fn anchored_trail(node: &TestNode, admin: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let trail = node.get_ok(TRAIL, admin).await;
        let head = trail["entries"].as_array().unwrap().last().unwrap()["seq"].clone();
        if trail["latest_anchor"]["seq"] == head && trail["latest_anchor"]["confirmed"] == true {
            return trail;
        }
        assert!(
            Instant::now() < deadline,
            "the trail's head was never anchored: {trail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rows_deleted_and_the_chain_recomputed_are_found(metadata: Metadata) {
    let node = start(&metadata).await;
    let admin = busy_trail(&node).await;
    let trail = anchored_trail(&node, &admin).await;
    assert_eq!(trail["chain_intact"], true, "{trail}");
    assert_eq!(
        (
            &trail["hmac_checked"],
            &trail["keyed_from"],
            &trail["unkeyed"]
        ),
        (&json!(true), &json!(1), &json!(0)),
        "a new node keys its trail from the first entry"
    );
    assert_eq!(trail["entries"][0]["action"], "audit_keying_began");

    // The anchored head is listed with its path to the batch root (and the signed journal line).
    let anchors = node.get_ok(&format!("{TRAIL}/anchors"), &admin).await;
    let anchor = anchors["anchors"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let hex32 = |value: &Value| -> [u8; 32] {
        hex::decode(value.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let path = canopy_chain::AnchorPath {
        entry_index: anchor["entry_index"].as_u64().unwrap(),
        entry_count: anchor["entry_count"].as_u64().unwrap(),
        path: anchor["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(hex32)
            .collect(),
    };
    canopy_chain::verify_audit_anchor(
        anchor["seq"].as_u64().unwrap(),
        &hex32(&anchor["hash"]),
        &path,
        &hex32(&anchor["batch_root"]),
    )
    .unwrap();
    assert!(anchor["batch_note"].is_string(), "{anchor}");

    let first_deleted = first_of(&trail, "verify_user");
    let node = tamper_while_stopped(node, &metadata, |intruder| async move {
        intruder.drop_triggers().await;
        let kept = intruder
            .trail()
            .await
            .into_iter()
            .filter(|entry| entry.action != "verify_user")
            .collect();
        intruder.replace_trail(&renumbered(kept)).await;
    })
    .await;

    // Before the key, the recomputed chain looked whole; the HMAC names the first entry gone.
    let (admin, _) = node.login("root").await;
    let trail = node.get_ok(TRAIL, &admin).await;
    assert_eq!(trail["chain_intact"], false, "{trail}");
    assert_eq!(
        (&trail["first_bad"]["seq"], &trail["first_bad"]["kind"]),
        (&json!(first_deleted), &json!("bad_hmac")),
        "{trail}"
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_deleted_and_the_chain_recomputed_are_found_on_sqlite() {
    rows_deleted_and_the_chain_recomputed_are_found(Metadata::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_deleted_and_the_chain_recomputed_are_found_on_postgres() {
    rows_deleted_and_the_chain_recomputed_are_found(Metadata::Postgres(
        TestDatabase::create().await,
    ))
    .await;
}

async fn an_altered_detail_is_named(metadata: Metadata) {
    let node = start(&metadata).await;
    let admin = busy_trail(&node).await;
    let trail = node.get_ok(TRAIL, &admin).await;
    assert_eq!(trail["chain_intact"], true, "{trail}");
    let verification = first_of(&trail, "verify_user");
    let node = tamper_while_stopped(node, &metadata, |intruder| async move {
        intruder.drop_triggers().await;
        intruder
            .execute("UPDATE audit_trail SET detail = '{\"role\":\"citizen\"}' WHERE action = 'verify_user'")
            .await;
    })
    .await;
    let (admin, _) = node.login("root").await;
    let trail = node.get_ok(TRAIL, &admin).await;
    assert_eq!(
        (
            &trail["chain_intact"],
            &trail["first_bad"]["seq"],
            &trail["first_bad"]["kind"]
        ),
        (&json!(false), &json!(verification), &json!("altered")),
        "{trail}"
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_altered_detail_is_named_on_sqlite() {
    an_altered_detail_is_named(Metadata::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_altered_detail_is_named_on_postgres() {
    an_altered_detail_is_named(Metadata::Postgres(TestDatabase::create().await)).await;
}

/// The TOTP code generator of an enrolment answer.
fn totp_of(enrolment: &Value) -> totp_rs::TOTP {
    let secret = totp_rs::Secret::Encoded(enrolment["secret_base32"].as_str().unwrap().into())
        .to_bytes()
        .unwrap();
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap()
}

async fn totp_secrets_are_sealed_and_survive_a_restart(metadata: Metadata) {
    let node = start(&metadata).await;
    node.register("cora").await;
    let (access, _) = node.login("cora").await;
    let enrolment = node
        .post_expecting(
            "/api/v1/auth/2fa/enrol",
            Some(&access),
            json!({ "password": PASSWORD }),
            StatusCode::OK,
        )
        .await;
    let totp = totp_of(&enrolment);
    let step = canopy_schemas::clock::unix_now() / 30;
    node.post_expecting(
        "/api/v1/auth/2fa/confirm",
        Some(&access),
        json!({ "password": PASSWORD, "code": totp.generate(step * 30) }),
        StatusCode::OK,
    )
    .await;

    // Both keys: 32 random bytes, the owner's only.
    for file in ["secrets.key", "audit-hmac.key"] {
        let path = node.dir.path().join("keys").join(file);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is {:o}", mode & 0o777);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32, "{file}");
    }

    let node = restart(node, &metadata).await;
    let intruder = Intruder::connect(node.dir.path(), &metadata).await;
    let secret = totp.secret.clone();
    let (clear, sealed) = intruder.totp_columns("cora").await;
    assert_eq!(clear, None, "the secret is stored in the clear");
    let sealed = sealed.expect("no sealed secret");
    assert!(
        !sealed.windows(secret.len()).any(|w| w == secret.as_slice()),
        "the sealed secret holds the secret"
    );

    // After the restart the sealed secret opens: the next step's code signs in, once.
    let login =
        json!({ "username": "cora", "password": PASSWORD, "totp": totp.generate((step + 1) * 30) });
    node.post_expecting(LOGIN, None, login.clone(), StatusCode::OK)
        .await;
    assert_eq!(
        node.post_refusal(LOGIN, None, login).await,
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_secrets_are_sealed_and_survive_a_restart_on_sqlite() {
    totp_secrets_are_sealed_and_survive_a_restart(Metadata::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_secrets_are_sealed_and_survive_a_restart_on_postgres() {
    totp_secrets_are_sealed_and_survive_a_restart(Metadata::Postgres(TestDatabase::create().await))
        .await;
}
