//! The audit trail as an auditor checks it (issue 16): an export of `canopy up`'s trail
//! (its pages and its anchors, concatenated) checks out with `canopy verify --audit` against
//! the anchor journal; after someone with write access to the database deleted rows and
//! recomputed the chain, or cut off the tail after it was anchored, it does not, and the
//! verdict names the first bad entry. The same against the contract, on a real anvil.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canopy_serving::store::{AUDIT_GENESIS, AuditRecord};
use common::anvil::*;
use common::*;
use serde_json::{Value, json};
use sqlx::Row;

/// A node with an anchored audit trail, and an admin's token that outlives a restart.
struct AuditedNode {
    data: tempfile::TempDir,
    port: u16,
    flags: Vec<String>,
    child: Child,
    client: reqwest::Client,
    base: String,
    admin: String,
}

impl Drop for AuditedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Anchoring five times a second in the journal; `canopy up`'s other loops left out.
const JOURNAL_FLAGS: [&str; 4] = ["--anchor-interval-s", "0.2", "--no-lake", "--no-sensors"];

impl AuditedNode {
    /// Starts a node with `flags`, fills its trail (an admin made by the CLI, sign-ups,
    /// sign-ins, a verification) and waits until the trail's head is anchored.
    async fn start(flags: &[&str]) -> AuditedNode {
        let flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        let data = tempfile::tempdir().unwrap();
        create_admin(data.path());
        let port = free_port();
        let child = start_with(data.path(), port, &as_strs(&flags));
        let client = canopy_testkit::http_client();
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&client, &base).await;
        let admin = login(&client, &base, "root").await;
        for name in ["cora", "dana", "emil"] {
            let token = register(&client, &base, name).await;
            if name == "dana" {
                let verification = json!({ "user_id": subject(&token), "role": "expert", "weight": 2.0, "field": "soil" });
                let (status, body) = post(
                    &client,
                    format!("{base}/api/v1/auth/verify-expert"),
                    Some(&admin),
                    verification,
                )
                .await
                .unwrap();
                assert_eq!(status, 200, "{body}");
            }
        }
        let node = AuditedNode {
            data,
            port,
            flags,
            child,
            client,
            base,
            admin,
        };
        node.wait_anchored().await;
        node
    }

    async fn trail_page(&self, after: i64, limit: i64) -> Value {
        get_json(
            &self.client,
            format!(
                "{}/api/v1/audit/trail?after={after}&limit={limit}",
                self.base
            ),
            &self.admin,
        )
        .await
    }

    async fn wait_anchored(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let page = self.trail_page(0, 1000).await;
            let head = page["entries"].as_array().unwrap().last().unwrap()["seq"].clone();
            if page["latest_anchor"]["seq"] == head && page["latest_anchor"]["confirmed"] == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never anchored: {page}\n{}",
                node_log(self.data.path(), 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The export an auditor makes: every page of the trail, in pages of 4 entries, then
    /// every page of its anchors, one JSON answer after another in one file.
    async fn export(&self) -> std::path::PathBuf {
        let mut text = String::new();
        let mut after = 0;
        loop {
            let page = self.trail_page(after, 4).await;
            text.push_str(&page.to_string());
            text.push('\n');
            match page["next_after"].as_i64() {
                Some(next) => after = next,
                None => break,
            }
        }
        let anchors = get_json(
            &self.client,
            format!("{}/api/v1/audit/trail/anchors", self.base),
            &self.admin,
        )
        .await;
        text.push_str(&anchors.to_string());
        let path = self.data.path().join("audit-export.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn record_key(&self) -> String {
        get_public_json(&self.client, format!("{}/api/v1/audit/key", self.base)).await["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `canopy verify --audit` of `export` on chain through `rpc`.
    fn verify_on_chain(&self, export: &Path, rpc: &str) -> (i32, String) {
        canopy(&[
            "verify".into(),
            "--audit".into(),
            export.display().to_string(),
            "--rpc".into(),
            rpc.into(),
        ])
    }

    /// `canopy verify --audit` of `export` against the node's journal, with the audit key
    /// or without it.
    fn verify(&self, export: &Path, key: &str, with_audit_key: bool) -> (i32, String) {
        let data = self.data.path();
        let journal = data.join("anchors").join("journal.jsonl");
        let audit_key = data.join("keys").join("audit-hmac.key");
        let mut args = vec![
            "verify".to_string(),
            "--audit".into(),
            export.display().to_string(),
            "--journal".into(),
            journal.display().to_string(),
            "--key".into(),
            key.into(),
        ];
        if with_audit_key {
            args.extend(["--audit-key".into(), audit_key.display().to_string()]);
        }
        canopy(&args)
    }

    /// Stops the node, lets `tamper` loose on its database, and starts it again.
    async fn tamper_while_stopped(&mut self, tamper: impl AsyncFnOnce(&sqlx::SqlitePool)) {
        kill_9(&mut self.child);
        let url = format!("sqlite://{}", self.data.path().join("canopy.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql("DROP TRIGGER audit_trail_no_update; DROP TRIGGER audit_trail_no_delete;")
            .execute(&pool)
            .await
            .unwrap();
        tamper(&pool).await;
        pool.close().await;
        self.child = start_with(self.data.path(), self.port, &as_strs(&self.flags));
        wait_healthy(&self.client, &self.base).await;
    }
}

fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

fn canopy(args: &[String]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

async fn read_trail(pool: &sqlx::SqlitePool) -> Vec<AuditRecord> {
    sqlx::query("SELECT * FROM audit_trail ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
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
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_deleted_and_the_chain_recomputed_fail_the_audit_check() {
    let mut node = AuditedNode::start(&JOURNAL_FLAGS).await;
    let key = node.record_key().await;
    let export = node.export().await;
    let (status, verdict) = node.verify(&export, &key, true);
    assert_eq!(status, 0, "{verdict}");
    assert!(
        verdict.starts_with("OK audit trail entries 1..=")
            && verdict.contains("HMAC (key ")
            && verdict.contains("journal, signed"),
        "{verdict}"
    );

    // Every verification deleted, the rest renumbered and chained again (each row keeps its
    // HMAC: whoever rewrites has no key to make new ones).
    let mut first_deleted = 0;
    node.tamper_while_stopped(async |pool| {
        let entries = read_trail(pool).await;
        first_deleted = entries
            .iter()
            .find(|entry| entry.action == "verify_user")
            .unwrap()
            .seq;
        sqlx::query("DELETE FROM audit_trail")
            .execute(pool)
            .await
            .unwrap();
        let mut prev = AUDIT_GENESIS.to_string();
        for (seq, entry) in (1..).zip(entries.iter().filter(|e| e.action != "verify_user")) {
            let hash = AuditRecord::compute_hash(
                &prev,
                seq,
                entry.at,
                &entry.actor,
                &entry.action,
                &entry.detail,
            );
            sqlx::query("INSERT INTO audit_trail (seq, at, actor, action, detail, prev_hash, hash, hmac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(seq)
                .bind(entry.at)
                .bind(&entry.actor)
                .bind(&entry.action)
                .bind(&entry.detail)
                .bind(&prev)
                .bind(&hash)
                .bind(&entry.hmac)
                .execute(pool)
                .await
                .unwrap();
            prev = hash;
        }
    })
    .await;

    let export = node.export().await;
    let (status, verdict) = node.verify(&export, &key, true);
    assert_eq!(status, 1, "{verdict}");
    assert!(
        verdict.starts_with(&format!("FAIL bad_hmac: entry {first_deleted}'s HMAC")),
        "{verdict}"
    );
    // Without the audit key the anchored head shows it: the entry at its seq is another.
    let (status, verdict) = node.verify(&export, &key, false);
    assert_eq!(status, 1, "{verdict}");
    assert!(
        verdict.starts_with("FAIL not_as_anchored:") || verdict.starts_with("FAIL missing:"),
        "{verdict}"
    );
    let page = node.trail_page(0, 1000).await;
    assert_eq!(
        (&page["chain_intact"], &page["first_bad"]["seq"]),
        (&json!(false), &json!(first_deleted)),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tail_cut_off_after_anchoring_fails_the_audit_check() {
    let mut node = AuditedNode::start(&JOURNAL_FLAGS).await;
    let key = node.record_key().await;
    let anchored = node.trail_page(0, 1000).await["latest_anchor"]["seq"]
        .as_i64()
        .unwrap();
    // The last three entries go; nothing needs recomputing.
    let kept = anchored - 3;
    node.tamper_while_stopped(async |pool| {
        sqlx::query("DELETE FROM audit_trail WHERE seq > $1")
            .bind(kept)
            .execute(pool)
            .await
            .unwrap();
    })
    .await;
    let export = node.export().await;
    for with_audit_key in [true, false] {
        let (status, verdict) = node.verify(&export, &key, with_audit_key);
        assert_eq!(status, 1, "{verdict}");
        assert!(
            verdict.starts_with(&format!(
                "FAIL missing: entry {} is missing: the trail ends at {kept}, but entry {anchored} was anchored in journal batch",
                kept + 1
            )),
            "{verdict}"
        );
    }
    let (status, verdict) = canopy(&[
        "verify".into(),
        "--audit".into(),
        "/nonexistent.json".into(),
    ]);
    assert!(
        status == 2 && verdict.starts_with("FAIL unreadable"),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audit_export_checks_against_the_contract() {
    let anvil = start_anvil();
    let contract = deploy_contract(&anvil);
    let mut flags = evm_args("0.3", &anvil.url, &contract).to_vec();
    flags.extend(["--no-lake", "--no-sensors"]);
    let mut node = AuditedNode::start(&flags).await;
    let export = node.export().await;
    let (status, verdict) = node.verify_on_chain(&export, &anvil.url);
    assert_eq!(status, 0, "{verdict}");
    assert!(
        verdict.contains("anchored in contract batch") && verdict.ends_with("(on chain)"),
        "{verdict}"
    );

    let anchored = node.trail_page(0, 1000).await["latest_anchor"]["seq"]
        .as_i64()
        .unwrap();
    node.tamper_while_stopped(async |pool| {
        sqlx::query("DELETE FROM audit_trail WHERE seq > $1")
            .bind(anchored - 1)
            .execute(pool)
            .await
            .unwrap();
    })
    .await;
    let export = node.export().await;
    let (status, verdict) = node.verify_on_chain(&export, &anvil.url);
    assert_eq!(status, 1, "{verdict}");
    assert!(
        verdict.starts_with(&format!("FAIL missing: entry {anchored} is missing")),
        "{verdict}"
    );
}
