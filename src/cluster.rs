//! `canopy worker` and `canopy serve`: the processes of a cluster, configured like
//! `canopy up` (`crate::config`), usually from one file every host shares.

use std::time::Duration;

use anyhow::Context;
use canopy_node::Node;
use canopy_node::worker::WorkerNode;
use clap::Args;

use crate::config::ConfigFlags;

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    flags: ConfigFlags,
    /// This process's index in the cluster (in workers.hosts), from 0.
    #[arg(long, default_value_t = 0)]
    process: usize,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    let settings = args.flags.load()?.config;
    #[allow(unused_mut)]
    let mut config = settings.worker_config(args.process)?;
    let processes = settings.workers.hosts.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        #[cfg(not(feature = "evm"))]
        settings.refuse_evm()?;
        // Process 0 runs the anchoring rounds.
        #[cfg(feature = "evm")]
        if args.process == 0
            && let Some(target) = crate::evm::target(&settings.evm_args()).await?
        {
            config.record.anchor_target = Some(std::sync::Arc::new(target));
        }
        eprintln!(
            "canopy worker {} of {processes}: connecting to its peers, the store, Kafka and Redis",
            args.process
        );
        let node = WorkerNode::start(config)
            .await
            .context("starting the worker")?;
        println!("canopy worker {} of {processes}: running", args.process);
        if let Some(address) = node.metrics_address() {
            println!(
                "canopy worker {}: metrics at http://{address}/metrics, probes at /healthz and /readyz",
                args.process
            );
        }
        let failure = tokio::select! {
            () = crate::up::wait_for_stop_signal() => None,
            reason = watch_failure(&node) => Some(reason),
        };
        if let Some(reason) = failure {
            eprintln!(
                "canopy worker {}: the dataflow stopped: {reason}",
                args.process
            );
            eprintln!("  restart every worker process; they resume from the last checkpoint");
            // A worker whose peer died cannot be joined cleanly; exit at once.
            return Ok(std::process::ExitCode::from(3));
        }
        println!("canopy worker {}: stopping", args.process);
        node.shutdown().await.context("shutting down")?;
        println!("canopy worker {}: stopped cleanly", args.process);
        Ok(std::process::ExitCode::SUCCESS)
    })
}

async fn watch_failure(node: &WorkerNode) -> String {
    loop {
        if let Some(reason) = node.failure() {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    flags: ConfigFlags,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = args.flags.load()?.config.serve_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let node = Node::start(config).await.context("starting the replica")?;
        println!("canopy serve: listening on http://{}", node.addr);
        crate::up::wait_for_stop_signal().await;
        println!("canopy serve: stopping: finishing requests in flight");
        node.shutdown().await.context("shutting down")?;
        println!("canopy serve: stopped cleanly");
        Ok(std::process::ExitCode::SUCCESS)
    })
}
