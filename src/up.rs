//! `canopy up` (one process, embedded defaults), `canopy migrate` and `canopy admin create`.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use canopy_node::{Node, NodeConfig};
use canopy_schemas::{
    Ballot, Component, ComponentWeights, Decision, DecisionId, LoggedVote, Method, Vote, VoteId,
    VoterId, VoterSalt, Weight,
};
use canopy_serving::auth::Role;
use clap::Args;
use rand::Rng;

use crate::config::{ConfigFlags, StoreFlags};

/// The salt behind the demo voters' commitments (they have no accounts), fresh each run.
static DEMO_SALT: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();

/// `canopy up`: every setting from the layered configuration (see `crate::config`).
#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    flags: ConfigFlags,
}

#[derive(Args)]
pub struct AdminCreateArgs {
    #[command(flatten)]
    store: StoreFlags,
    #[arg(long)]
    username: String,
    #[arg(long, default_value = "admin")]
    role: String,
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let settings = args.flags.load()?.config;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        #[allow(unused_mut)]
        let mut config = settings.node_config()?;
        #[cfg(not(feature = "evm"))]
        settings.refuse_evm()?;
        #[cfg(feature = "evm")]
        if let Some(target) = crate::evm::target(&settings.evm_args()).await? {
            println!("  anchoring on chain: {}", {
                use canopy_chain::AnchorTarget;
                target.name()
            });
            config.record.anchor_target = Some(Arc::new(target));
        }
        let node = Node::start(config).await.context("starting the node")?;
        println!("Canopy is listening on http://{}", node.addr);
        if let Some(sql_addr) = node.sql_addr() {
            println!(
                "  SQL over the lake (PostgreSQL protocol): psql -h {} -p {} -U <analyst> canopy",
                sql_addr.ip(),
                sql_addr.port()
            );
        }
        println!("  data directory: {}", settings.data_dir.display());
        println!(
            "  create the first admin: canopy admin create --data-dir {} --username <name>",
            settings.data_dir.display()
        );
        println!("    (reads the password, 10 characters or more, from standard input)");
        println!(
            "  health: http://{0}/healthz   readiness: http://{0}/readyz",
            node.addr
        );
        if settings.demo {
            for decision in seed_demo(&node).await? {
                println!(
                    "  demo decision {} ({}) is receiving synthetic votes:",
                    decision.id, decision.title
                );
                println!(
                    "    a signed-in user can read /api/v1/voting/decision/{0}/results and \
                     /api/v1/voting/decisions/{0} (its status); once final, anyone can read \
                     its signed result at http://{1}/api/v1/audit/decisions/{0}/result",
                    decision.id, node.addr
                );
            }
        }
        wait_for_stop_signal().await;
        println!("canopy: stopping: no new connections; finishing requests in flight");
        node.shutdown().await.context("shutting down")?;
        println!("canopy: stopped cleanly");
        Ok(())
    })
}

pub(crate) async fn wait_for_stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// The demo's decisions: one of each voting method that stays open, and one that closes a
/// minute after the node starts, so a newcomer sees a final result appear.
struct DemoDecision {
    title: &'static str,
    options: &'static [&'static str],
    open_for_micros: i64,
    method: Method,
    credits: u32,
}

const DEMO_YEAR_MICROS: i64 = 365 * 24 * 3600 * 1_000_000;

const DEMO_DECISIONS: [DemoDecision; 5] = [
    DemoDecision {
        title: "Demo: restore the river delta wetlands?",
        options: &["restore", "partially restore", "leave as is"],
        open_for_micros: DEMO_YEAR_MICROS,
        method: Method::SingleChoice,
        credits: 0,
    },
    DemoDecision {
        title: "Demo: close the quarry road to trucks? (closes a minute after start)",
        options: &["close it", "keep it open"],
        open_for_micros: 60 * 1_000_000,
        method: Method::SingleChoice,
        credits: 0,
    },
    DemoDecision {
        title: "Demo: which restoration projects should the fund back? (approval)",
        options: &[
            "oyster reefs",
            "dune planting",
            "fish ladders",
            "peat rewetting",
        ],
        open_for_micros: DEMO_YEAR_MICROS,
        method: Method::Approval,
        credits: 0,
    },
    DemoDecision {
        title: "Demo: rank the flood defence plans (ranked choice)",
        options: &[
            "managed retreat",
            "sea wall",
            "salt marsh buffer",
            "pumping stations",
        ],
        open_for_micros: DEMO_YEAR_MICROS,
        method: Method::RankedChoice,
        credits: 0,
    },
    DemoDecision {
        title: "Demo: spread 16 credits over the tree-planting sites (quadratic)",
        options: &[
            "school grounds",
            "riverbank",
            "old rail line",
            "market square",
        ],
        open_for_micros: DEMO_YEAR_MICROS,
        method: Method::Quadratic,
        credits: 16,
    },
];

/// Registers the demo decisions (the closing one anew each start) and starts synthetic
/// voters casting through the gate.
async fn seed_demo(node: &Node) -> anyhow::Result<Vec<Decision>> {
    let state = Arc::clone(&node.state);
    let stored = state.store.decisions().await?;
    let owner = match state.store.user_by_username("demo-owner").await? {
        Some(user) => user.id,
        None => {
            let password: String = (0..32)
                .map(|_| rand::rng().random_range('a'..='z'))
                .collect();
            canopy_serving::api::create_user(
                state.store.as_ref(),
                "demo-owner",
                &password,
                Role::Operator,
            )
            .await?
        }
    };
    let now = canopy_schemas::clock::now_micros();
    let mut decisions = Vec::new();
    for demo in &DEMO_DECISIONS {
        let existing = stored
            .iter()
            .find(|d| d.title == demo.title && now < d.closes_at);
        if let Some(decision) = existing {
            decisions.push(decision.clone());
            continue;
        }
        let decision = Decision {
            electorate: Default::default(),
            credits: demo.credits,
            id: DecisionId::new_random(),
            title: demo.title.into(),
            description: String::new(),
            region: "delta".into(),
            options: demo.options.iter().map(|o| o.to_string()).collect(),
            opens_at: now,
            closes_at: now + demo.open_for_micros,
            weights: ComponentWeights::DEFAULT,
            quorum: 50,
            method: demo.method,
        };
        state.gate.register(decision.clone(), now)?;
        state
            .store
            .put_decision(&decision, owner, now / 1_000_000)
            .await?;
        if let Some(engine) = &state.engine {
            engine.register(decision.clone());
        }
        decisions.push(decision);
    }
    let gate = Arc::clone(&state.gate);
    let mut open = decisions.clone();
    std::thread::Builder::new()
        .name("canopy-demo-voters".into())
        .spawn(move || {
            let mut rng = rand::rng();
            while !open.is_empty() {
                let at = rng.random_range(0..open.len());
                let demo = &open[at];
                let expert = rng.random_range(0..10) == 0;
                let options = demo.options.len() as u16;
                // Single choice skewed towards the first options, so the result is not a
                // coin toss; the other methods' ballots at random.
                let ballot = match demo.method {
                    Method::SingleChoice => Ballot::SingleChoice(
                        rng.random_range(0..options)
                            .min(rng.random_range(0..options)) as u8,
                    ),
                    _ => canopy_schemas::synthetic::random_ballot(&mut rng, demo),
                };
                let vote = Vote {
                    vote_id: VoteId::new_random(),
                    decision_id: demo.id,
                    voter_id: VoterId(rng.random_range(0..2_000)),
                    ballot,
                    component: if expert {
                        Component::Expert
                    } else {
                        Component::Democratic
                    },
                    weight: if expert {
                        Weight(2_000_000)
                    } else {
                        Weight::ONE
                    },
                    cast_at: canopy_schemas::clock::now_micros(),
                };
                // Demo voters have no accounts (so no stored salt): one salt for this run.
                let salt = *DEMO_SALT.get_or_init(rand::random::<[u8; 32]>);
                if gate
                    .submit(&[LoggedVote::new(vote, &VoterSalt(salt))])
                    .is_err()
                {
                    // Closed (or the node is stopping): its voters move to the others.
                    open.swap_remove(at);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
    Ok(decisions)
}

#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    store: StoreFlags,
}

/// A one-threaded runtime and the store settings the CLI's account commands share.
fn store_command(store: &StoreFlags) -> anyhow::Result<(tokio::runtime::Runtime, NodeConfig)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((runtime, store.load()?.config.store_config()))
}

/// Brings the metadata store's schema up to date (`canopy up` does it too, at start).
pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let (runtime, config) = store_command(&args.store)?;
    runtime.block_on(async move {
        let store = canopy_node::node::connect_store(&config).await?;
        let applied = store.migrate().await?;
        println!("{}", serde_json::json!({ "applied": applied }));
        anyhow::Ok(())
    })
}

pub fn admin_create(args: AdminCreateArgs) -> anyhow::Result<()> {
    let role = Role::parse(&args.role).with_context(|| format!("unknown role {:?}", args.role))?;
    eprintln!(
        "password for {} (one line on standard input):",
        args.username
    );
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']).to_string();
    let (runtime, config) = store_command(&args.store)?;
    runtime.block_on(async move {
        let store = canopy_node::node::open_store(&config).await?;
        let id = canopy_serving::api::create_user(store.as_ref(), &args.username, &password, role)
            .await?;
        let created = serde_json::json!({ "user_id": id, "username": args.username, "role": role });
        store
            .append_audit(
                "cli",
                "create_user",
                &created.to_string(),
                canopy_schemas::clock::now_micros(),
            )
            .await?;
        println!("{created}");
        anyhow::Ok(())
    })
}
