//! Requests a real attacker would send. Each gets the right refusal and changes nothing.

mod common;

use base64::Engine;
use canopy_serving::auth::Role;
use canopy_serving::limits::Rate;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, CREATE_DECISION, LOGIN, PASSWORD, TestNode, audit_entries};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

const REFRESH_TOKEN: &str = "/api/v1/auth/refresh-token";

fn refresh(token: &str) -> Value {
    json!({ "refresh_token": token })
}

fn now() -> u64 {
    canopy_schemas::clock::unix_now()
}

fn claims(sub: uuid::Uuid, role: &str) -> Value {
    json!({ "iss": "canopy", "aud": "canopy-api", "sub": sub, "exp": now() + 600, "iat": now(), "typ": "access", "role": role, "weight": 1_000_000 })
}

fn private_key(node: &TestNode) -> EncodingKey {
    let pem = std::fs::read(node.dir.path().join("keys").join("jwt-rs256.pem")).unwrap();
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

/// Every forged or stale token is refused, and nothing it asked for happens.
#[tokio::test]
async fn forged_and_stale_tokens_are_refused() {
    let node = TestNode::start(ApiConfig::default()).await;
    let admin_id = node.create("root", Role::Admin).await;
    let citizen_id = node.register("cora").await;
    let (admin, _) = node.login("root").await;
    let (citizen, _) = node.login("cora").await;
    let decision = node.create_decision(&admin, 1).await;
    let create = json!({ "title": "Forged", "options": ["a", "b"], "closes_at": i64::MAX });
    let cast = json!({ "decision_id": decision, "option": 0 });

    let admin_claims = claims(admin_id, "admin");
    let payload = B64.encode(admin_claims.to_string());
    let alg_none = format!("{}.{payload}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));

    let public_pem = node.node.state.keys.public_pem().to_string();
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &admin_claims,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();

    let key = private_key(&node);
    let mut expired_claims = claims(citizen_id, "citizen");
    expired_claims["exp"] = json!(now() - 10);
    expired_claims["iat"] = json!(now() - 1000);
    let expired =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &expired_claims, &key).unwrap();
    let mut foreign_claims = claims(admin_id, "admin");
    foreign_claims["aud"] = json!("some-other-service");
    let wrong_audience =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &foreign_claims, &key).unwrap();
    let mut refresh_typed = claims(admin_id, "admin");
    refresh_typed["typ"] = json!("refresh");
    let wrong_type =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &refresh_typed, &key).unwrap();

    // The citizen's real token with its payload rewritten to say admin.
    let parts: Vec<&str> = citizen.split('.').collect();
    let mut tampered_claims: Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    tampered_claims["role"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(tampered_claims.to_string()),
        parts[2]
    );

    let records = node.log_records();
    let cases = [
        ("alg=none", alg_none, "invalid_token"),
        (
            "HS256 signed with the public key",
            hs256_with_public_key,
            "invalid_token",
        ),
        ("expired", expired, "token_expired"),
        ("wrong audience", wrong_audience, "invalid_token"),
        ("not an access token", wrong_type, "invalid_token"),
        ("tampered payload", tampered, "invalid_token"),
        ("garbage", "not.a.token".to_string(), "invalid_token"),
    ];
    for (name, token, expected) in cases {
        // Each forged token both creates a decision and casts a vote, in that order.
        for (path, body) in [(CREATE_DECISION, &create), (CAST_VOTE, &cast)] {
            let refusal = node.post_refusal(path, Some(&token), body.clone()).await;
            assert_eq!(refusal, (StatusCode::UNAUTHORIZED, expected), "{name}");
        }
    }
    assert_eq!(
        node.post_refusal(CAST_VOTE, None, cast.clone()).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );

    assert_eq!(
        node.log_records(),
        records,
        "no forged vote reached the log"
    );
    let (_, active) = node.get("/api/v1/voting/active-decisions", &admin).await;
    assert_eq!(
        active.as_array().unwrap().len(),
        1,
        "no forged decision was created"
    );
    let (_, trail) = node.get("/api/v1/audit/trail", &admin).await;
    // The whole flood came from one address within a minute: one row, not one per token.
    let refusals = audit_entries(&trail, "refused");
    assert_eq!(refusals, 1, "refused tokens in the audit trail");
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refresh_token_used_twice_revokes_its_family() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.register("cora").await;
    let (_, first) = node.login("cora").await;
    let rotated = node
        .post_expecting(REFRESH_TOKEN, None, refresh(&first), StatusCode::OK)
        .await;
    let second = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first);

    // The thief replays the first token: refused, and the family with it.
    assert_eq!(
        node.post_refusal(REFRESH_TOKEN, None, refresh(&first))
            .await,
        (StatusCode::UNAUTHORIZED, "refresh_token_reused")
    );
    assert_eq!(
        node.post_refusal(REFRESH_TOKEN, None, refresh(&second))
            .await,
        (StatusCode::UNAUTHORIZED, "bad_refresh_token"),
        "the rotated token died with its family"
    );

    // A new login starts a new family; revoking it ends it.
    let (_, third) = node.login("cora").await;
    let (status, _) = node
        .post("/api/v1/auth/revoke-token", None, refresh(&third))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        node.post_refusal(REFRESH_TOKEN, None, refresh(&third))
            .await,
        (StatusCode::UNAUTHORIZED, "bad_refresh_token")
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_totp_code_works_once() {
    let node = TestNode::start(ApiConfig::default()).await;
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
    let secret = totp_rs::Secret::Encoded(enrolment["secret_base32"].as_str().unwrap().to_string())
        .to_bytes()
        .unwrap();
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret).unwrap();
    let step = now() / 30;
    let code_now = totp.generate(step * 30);
    let confirm = json!({ "password": PASSWORD, "code": code_now });
    node.post_expecting(
        "/api/v1/auth/2fa/confirm",
        Some(&access),
        confirm,
        StatusCode::OK,
    )
    .await;

    let login =
        |code: Option<&str>| json!({ "username": "cora", "password": PASSWORD, "totp": code });
    let without_code = json!({ "username": "cora", "password": PASSWORD });
    assert_eq!(
        node.post_refusal(LOGIN, None, without_code).await,
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );
    // The code that confirmed enrolment is spent: a replay is refused.
    assert_eq!(
        node.post_refusal(LOGIN, None, login(Some(&code_now))).await,
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );
    // A wrong code is refused.
    node.post_expecting(LOGIN, None, login(Some("000000")), StatusCode::UNAUTHORIZED)
        .await;
    // The next step's code is within the allowed drift, and works once.
    let code_next = totp.generate((step + 1) * 30);
    node.post_expecting(LOGIN, None, login(Some(&code_next)), StatusCode::OK)
        .await;
    assert_eq!(
        node.post_refusal(LOGIN, None, login(Some(&code_next)))
            .await,
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn role_and_identity_cannot_be_claimed_through_the_body() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    let victim = node.register("vera").await;
    node.register("mallory").await;
    let (admin, _) = node.login("root").await;
    let (mallory, _) = node.login("mallory").await;
    let decision = node.create_decision(&admin, 1).await;
    let records = node.log_records();

    // A citizen creating a decision.
    let create = json!({ "title": "Mine", "options": ["a", "b"], "closes_at": i64::MAX });
    assert_eq!(
        node.post_refusal(CREATE_DECISION, Some(&mallory), create)
            .await,
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // Voting as someone else, or with another weight or component, through the body.
    for smuggled in [
        json!({ "voter_id": victim }),
        json!({ "weight": 100 }),
        json!({ "component": "expert" }),
    ] {
        let mut body = json!({ "decision_id": decision, "option": 0 });
        body.as_object_mut()
            .unwrap()
            .extend(smuggled.as_object().unwrap().clone());
        assert_eq!(
            node.post_refusal(CAST_VOTE, Some(&mallory), body).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request")
        );
    }
    // A citizen relaying a batch, a citizen verifying themself, reading the audit trail.
    let batch =
        json!({ "votes": [{ "voter_token": mallory, "decision_id": decision, "option": 0 }] });
    let (status, _) = node
        .post("/api/v1/voting/cast-votes", Some(&mallory), batch)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let verify = json!({ "user_id": victim, "role": "expert", "weight": 100 });
    let (status, _) = node
        .post("/api/v1/auth/verify-expert", Some(&mallory), verify)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = node.get("/api/v1/audit/trail", &mallory).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bad votes: unknown option, unknown decision.
    let unknown_option = json!({ "decision_id": decision, "option": 7 });
    assert_eq!(
        node.post_refusal(CAST_VOTE, Some(&mallory), unknown_option)
            .await,
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_option")
    );
    let unknown = json!({ "decision_id": uuid::Uuid::new_v4(), "option": 0 });
    assert_eq!(
        node.post_refusal(CAST_VOTE, Some(&mallory), unknown).await,
        (StatusCode::NOT_FOUND, "unknown_decision")
    );

    assert_eq!(node.log_records(), records, "nothing reached the log");
    let user = node
        .node
        .state
        .store
        .user_by_id(victim)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.role, Role::Citizen, "nobody was verified");
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_and_floods_are_refused() {
    let api = ApiConfig {
        per_user: Rate {
            per_second: 5.0,
            burst: 10.0,
        },
        ..ApiConfig::default()
    };
    let node = TestNode::start(api).await;
    node.create("root", Role::Admin).await;
    node.register("cora").await;
    let (admin, _) = node.login("root").await;
    let (cora, _) = node.login("cora").await;
    let decision = node.create_decision(&admin, 1).await;
    let records = node.log_records();

    let huge =
        json!({ "title": "x".repeat(100_000), "options": ["a", "b"], "closes_at": i64::MAX });
    assert_eq!(
        node.post_refusal(CREATE_DECISION, Some(&admin), huge).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    let mut statuses = Vec::new();
    let mut retry_after = None;
    let flood_started = std::time::Instant::now();
    for _ in 0..30 {
        let response = node
            .client
            .post(format!("{}{CAST_VOTE}", node.base))
            .bearer_auth(&cora)
            .json(&json!({ "decision_id": decision, "option": 0 }))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
        statuses.push(response.status());
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // The burst of 10, plus what 5 per second refilled while the flood lasted.
    let refill = (flood_started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (10..=10 + refill).contains(&accepted) && limited > 0,
        "the burst of 10 (plus {refill} refilled) got through: {statuses:?}"
    );
    assert_eq!(accepted + limited, 30);
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "429 says when to come back"
    );
    assert_eq!(
        node.log_records(),
        records + accepted as u64,
        "only accepted votes reached the log"
    );
    let (_, active) = node.get("/api/v1/voting/active-decisions", &admin).await;
    assert_eq!(active.as_array().unwrap().len(), 1);
    node.node.shutdown().await.unwrap();
}

/// Registers `username` from the loopback address `from` (127.0.0.0/8 all reaches the node).
async fn register_from(node: &TestNode, from: [u8; 4], username: &str) -> reqwest::Response {
    canopy_testkit::http_client_builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap()
        .post(format!("{}/api/v1/auth/register", node.base))
        .json(&json!({ "username": username, "password": PASSWORD }))
        .send()
        .await
        .unwrap()
}

/// One address signing up account after account gets 429 `too_many_registrations` once
/// its hourly allowance is spent, and so does an address block rotated through; a refused
/// registration creates no account.
#[tokio::test]
async fn a_registration_flood_is_refused_per_address_and_per_block() {
    let node = TestNode::start_with(ApiConfig::default(), |config| {
        config.api.registrations_per_address = Rate::per_hour(5);
        config.api.registrations_per_block = Rate::per_hour(8);
    })
    .await;
    for n in 0..5 {
        let response = register_from(&node, [127, 0, 0, 1], &format!("sock{n}")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let refused = register_from(&node, [127, 0, 0, 1], "sock5").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 60, "retry after {retry_after} s");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_registrations", "{body}");
    let login = json!({ "username": "sock5", "password": PASSWORD });
    assert_eq!(
        node.post_refusal(LOGIN, None, login).await,
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );

    // Rotating through the block: three more from other addresses, then the block is spent.
    for (n, last) in [2u8, 3, 4].into_iter().enumerate() {
        let response = register_from(&node, [127, 0, 0, last], &format!("rot{n}")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let refused = register_from(&node, [127, 0, 0, 9], "rot3").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another block is not held to this one's allowance.
    let elsewhere = register_from(&node, [127, 0, 1, 1], "rot4").await;
    assert_eq!(elsewhere.status(), StatusCode::CREATED);
}

/// A decision's electorate is enforced for every component: a role it leaves out, a voter
/// verified for no region it names, a stakeholder of another region all get 403
/// `not_eligible`, append nothing and count nowhere.
#[tokio::test]
async fn votes_outside_the_electorate_are_refused_and_change_nothing() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let verify = |user: uuid::Uuid, role: &str, region: &str| json!({ "user_id": user, "role": role, "weight": 1.5, "field": "hydrology", "regions": [region] });
    let mut tokens = std::collections::HashMap::new();
    for (name, role, region) in [
        ("cora", None, ""),
        ("dora", Some("stakeholder"), "delta"),
        ("nora", Some("stakeholder"), "north"),
        ("ezra", Some("expert"), "north"),
    ] {
        let user = node.register(name).await;
        if let Some(role) = role {
            node.post_expecting(
                "/api/v1/auth/verify-expert",
                Some(&admin),
                verify(user, role, region),
                StatusCode::OK,
            )
            .await;
        }
        tokens.insert(name, node.login(name).await.0);
    }
    let decision_with = |electorate: Value| json!({ "title": "Dredge the north channel?", "region": "north", "options": ["yes", "no"], "closes_at": i64::MAX, "electorate": electorate });
    let create = |body: Value| {
        let node = &node;
        let admin = &admin;
        async move {
            node.post_expecting(CREATE_DECISION, Some(admin), body, StatusCode::CREATED)
                .await["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let open = create(decision_with(json!({}))).await;
    let regional = create(decision_with(json!({ "regions": ["north"] }))).await;
    let experts_only = create(decision_with(json!({ "roles": ["expert"] }))).await;

    let before = node.log_records();
    for (who, decision) in [
        ("dora", &open),     // a stakeholder of the delta on a north decision
        ("cora", &regional), // a citizen verified for no region
        ("dora", &regional), // verified, but for another region
        ("cora", &experts_only),
        ("nora", &experts_only),
    ] {
        let vote = json!({ "decision_id": decision, "option": 0 });
        let refusal = node.post_refusal(CAST_VOTE, Some(&tokens[who]), vote).await;
        assert_eq!(refusal, (StatusCode::FORBIDDEN, "not_eligible"), "{who}");
    }
    assert_eq!(node.log_records(), before, "a refused vote reached the log");

    for (who, decision) in [
        ("cora", &open),
        ("nora", &open),
        ("ezra", &regional),
        ("nora", &regional),
        ("ezra", &experts_only),
    ] {
        let vote = json!({ "decision_id": decision, "option": 1 });
        node.post_expecting(CAST_VOTE, Some(&tokens[who]), vote, StatusCode::CREATED)
            .await;
    }
    for (decision, turnout) in [(&open, 2), (&regional, 2), (&experts_only, 1)] {
        let path = format!("/api/v1/voting/decision/{decision}/results?min_offset=0");
        let mut results = node.get_ok(&path, &admin).await;
        for _ in 0..200 {
            if results["turnout"] == json!(turnout) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            results = node.get_ok(&path, &admin).await;
        }
        assert_eq!(results["turnout"], json!(turnout), "{results}");
    }

    // A malformed electorate is refused when the decision is created.
    for electorate in [
        json!({ "roles": ["citizen", "citizen"] }),
        json!({ "regions": [""] }),
        json!({ "roles": ["admin"] }),
        json!({ "regionz": ["north"] }),
    ] {
        let refusal = node
            .post_refusal(
                CREATE_DECISION,
                Some(&admin),
                decision_with(electorate.clone()),
            )
            .await;
        assert_eq!(
            refusal.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{electorate}"
        );
    }
}
