//! The command line of on-chain anchoring: `canopy up`'s `--evm-*` flags, which build
//! [`EvmTarget`], and `canopy evm deploy`. The client and the target are
//! `canopy_chain::evm`.

use std::time::Duration;

use anyhow::Context;
use canopy_chain::evm::{EvmAnchorConfig, EvmTarget};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct EvmArgs {
    /// JSON-RPC endpoint (http:// or https://) of an EVM node, or several separated by
    /// commas, tried in order when one cannot be reached (e.g. a provider and its backup);
    /// batch roots are anchored there instead of in the local anchor journal. TLS checks
    /// the system's roots (SSL_CERT_FILE names others).
    #[arg(long, env = "CANOPY_EVM_RPC")]
    pub evm_rpc: Option<String>,
    /// Address of the deployed GovernanceVotingVerifier (`canopy evm deploy`).
    #[arg(long, env = "CANOPY_EVM_CONTRACT", requires = "evm_rpc")]
    pub evm_contract: Option<String>,
    /// The anchoring key (hex secp256k1), the contract's owner.
    #[arg(
        long,
        env = "CANOPY_EVM_KEY",
        hide_env_values = true,
        requires = "evm_rpc"
    )]
    pub evm_key: Option<String>,
    /// Blocks on top of an anchoring transaction before it counts.
    #[arg(long, default_value_t = 2)]
    pub evm_confirmations: u64,
}

pub fn parse_address(text: &str) -> anyhow::Result<[u8; 20]> {
    let bytes = hex::decode(text.trim_start_matches("0x"))
        .with_context(|| format!("{text:?} is not a hex address"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a 20-byte address"))
}

/// The EVM anchor target of `--evm-rpc`, or `None` without it.
pub async fn target(args: &EvmArgs) -> anyhow::Result<Option<EvmTarget>> {
    let Some(rpc_url) = &args.evm_rpc else {
        return Ok(None);
    };
    let contract = parse_address(
        args.evm_contract
            .as_deref()
            .context("--evm-rpc needs --evm-contract (deploy one with `canopy evm deploy`)")?,
    )?;
    let key = args
        .evm_key
        .clone()
        .context("--evm-rpc needs the anchoring key (--evm-key or CANOPY_EVM_KEY)")?;
    let target = EvmTarget::connect(EvmAnchorConfig {
        rpc_url: rpc_url.clone(),
        private_key_hex: key,
        contract,
        confirmations: args.evm_confirmations,
        poll_interval: Duration::from_millis(250),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))
    .context("connecting to the EVM node")?;
    Ok(Some(target))
}

#[derive(Args)]
pub struct DeployArgs {
    /// JSON-RPC endpoint (http:// or https://).
    #[arg(long, env = "CANOPY_EVM_RPC")]
    rpc: String,
    /// The deploying key; it becomes the anchoring key (the contract's owner).
    #[arg(long, env = "CANOPY_EVM_KEY", hide_env_values = true)]
    key: String,
}

/// Deploys GovernanceVotingVerifier and prints `{"contract": "0x…"}`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let address = runtime
        .block_on(canopy_chain::evm::deploy(&args.rpc, &args.key))
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))
        .context("deploying GovernanceVotingVerifier")?;
    println!(
        "{}",
        serde_json::json!({ "contract": format!("0x{}", hex::encode(address)) })
    );
    Ok(())
}
