//! Contract bindings for `GovernanceVotingVerifier`, generated from the compiled artifact
//! (`{"abi": [...], "bytecode": "0x..."}`), so the deploy bytecode comes from it too.
//!
//! The artifact path is the single string literal below. A relative path is resolved against
//! the crate's `CARGO_MANIFEST_DIR`; canopy-chain sits at `<root>/chain/`, so it is
//! `"../contracts/artifacts/GovernanceVotingVerifier.json"`. The macro `include_bytes!`s the
//! file, so editing the artifact rebuilds the crate.

#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc, all_derives)]
    GovernanceVotingVerifier,
    "../contracts/artifacts/GovernanceVotingVerifier.json"
);
