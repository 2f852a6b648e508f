// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test, console} from "forge-std/Test.sol";

import {GovernanceVotingVerifier} from "../src/GovernanceVotingVerifier.sol";
import {Rfc6962} from "./Rfc6962.sol";

/// Gas figures for the README, printed as `GAS <case> | <execution gas> | <tx gas>` lines
/// (`forge test --match-contract GasTest -vv`, or `scripts/contracts-test --gas`).
///
/// Each test measures exactly one call, made in its own transaction with every account and
/// slot cold (state set up in setUp, which forge commits as an earlier transaction).
///   execution gas = gas used inside the contract's call frame (what `--gas-report` shows);
///   tx gas        = execution + 21000 + calldata (4 per zero byte, 16 per other byte), the
///                   cost of sending the call as a transaction (pre-Prague calldata pricing;
///                   the EIP-7623 floor does not bind for these calls).
contract GasTest is Test {
    GovernanceVotingVerifier internal v;
    address internal owner = makeAddr("anchoring-key");

    uint64 internal constant BATCH_SIZE = 100;
    uint64 internal constant ENTRY_INDEX = 37; // path length 7 in a batch of 100

    bytes16[] internal anchoredBefore; // 100 decisions that already have a history

    function setUp() public {
        v = new GovernanceVotingVerifier(owner);

        // 100 decisions anchored once already (for the re-anchoring figure).
        for (uint256 i = 0; i < BATCH_SIZE; ++i) {
            anchoredBefore.push(_id("old", i));
        }
        vm.prank(owner);
        v.recordBatch(keccak256("earlier"), BATCH_SIZE, anchoredBefore);

        // The verification batches: 100 entries each, entry ENTRY_INDEX being the decision
        // whose vote is checked (vote log of 1,000 leaves in batch 1, 1,000,000 in batch 2).
        _recordVerifyBatch(1_000);
        _recordVerifyBatch(1_000_000);
    }

    // ------------------------------------------------------------------ recordBatch

    function test_gas_recordBatch_1() public {
        _recordFresh(1);
    }

    function test_gas_recordBatch_10() public {
        _recordFresh(10);
    }

    function test_gas_recordBatch_100() public {
        _recordFresh(100);
    }

    function test_gas_recordBatch_100_reanchored() public {
        bytes memory cd =
            abi.encodeCall(GovernanceVotingVerifier.recordBatch, (keccak256("again"), BATCH_SIZE, anchoredBefore));
        _report("recordBatch, 100 decisions anchored before", _measure(owner, cd), cd);
    }

    function test_gas_recordDecisionHash() public {
        bytes memory cd = abi.encodeCall(GovernanceVotingVerifier.recordDecisionHash, (_id("single", 0), keccak256("r")));
        _report("recordDecisionHash (new decision)", _measure(owner, cd), cd);
    }

    // ------------------------------------------------------------------ verifyVoteHash

    function test_gas_verifyVoteHash_1e3() public {
        _verify(1_000, 1, "verifyVoteHash, vote log 1,000 (path 10), batch 100 (path 7)");
    }

    function test_gas_verifyVoteHash_1e6() public {
        _verify(1_000_000, 2, "verifyVoteHash, vote log 1,000,000 (path 20), batch 100 (path 7)");
    }

    // ------------------------------------------------------------------ fixtures

    function _id(string memory tag, uint256 i) internal pure returns (bytes16) {
        return bytes16(keccak256(abi.encode(tag, i)));
    }

    function _recordFresh(uint256 n) internal {
        bytes16[] memory ids = new bytes16[](n);
        for (uint256 i = 0; i < n; ++i) {
            ids[i] = _id("new", i);
        }
        bytes memory cd = abi.encodeCall(GovernanceVotingVerifier.recordBatch, (keccak256("root"), uint64(n), ids));
        _report(string.concat("recordBatch, ", vm.toString(n), n == 1 ? " new decision" : " new decisions"), _measure(owner, cd), cd);
    }

    /// The vote checked in a batch: leaf `treeSize / 2 - 44` of a vote log of `treeSize`
    /// leaves. Building a real tree of a million leaves is too slow here, so the path is
    /// random and the decision root is the root it implies (rootFromInclusion is checked
    /// against real trees in GovernanceVotingVerifier.t.sol); the gas only depends on the
    /// path length.
    function _vote(uint64 treeSize) internal view returns (GovernanceVotingVerifier.VoteProof memory vote, bytes32 root) {
        uint64 index = treeSize / 2 - 44; // 456 of 1,000 (path 10); 499,956 of 1,000,000 (path 20)
        bytes32[] memory path = new bytes32[](Rfc6962.pathLength(index, treeSize));
        for (uint256 i = 0; i < path.length; ++i) {
            path[i] = keccak256(abi.encode("sibling", treeSize, i));
        }
        vote = GovernanceVotingVerifier.VoteProof(keccak256(abi.encode("vote", treeSize)), index, treeSize, path);
        bool ok;
        (ok, root) = v.rootFromInclusion(vote.leafHash, index, treeSize, path);
        require(ok, "vote path shape");
    }

    function _recordVerifyBatch(uint64 treeSize) internal {
        (, bytes32 decisionRoot) = _vote(treeSize);
        bytes16[] memory ids = new bytes16[](BATCH_SIZE);
        bytes32[] memory entries = new bytes32[](BATCH_SIZE);
        for (uint256 i = 0; i < BATCH_SIZE; ++i) {
            ids[i] = _id("verify", treeSize * 1000 + i);
            entries[i] = i == ENTRY_INDEX
                ? Rfc6962.leafHash(Rfc6962.anchorEntry(ids[i], treeSize, decisionRoot))
                : keccak256(abi.encode("other entry", treeSize, i));
        }
        bytes32 root = Rfc6962.root(entries);
        vm.prank(owner);
        v.recordBatch(root, BATCH_SIZE, ids);
    }

    function _verify(uint64 treeSize, uint64 batchId, string memory label) internal {
        (GovernanceVotingVerifier.VoteProof memory vote,) = _vote(treeSize);
        bytes32[] memory entries = new bytes32[](BATCH_SIZE);
        bytes16 decisionId = _id("verify", treeSize * 1000 + ENTRY_INDEX);
        {
            (, bytes32 decisionRoot) = _vote(treeSize);
            for (uint256 i = 0; i < BATCH_SIZE; ++i) {
                entries[i] = i == ENTRY_INDEX
                    ? Rfc6962.leafHash(Rfc6962.anchorEntry(decisionId, treeSize, decisionRoot))
                    : keccak256(abi.encode("other entry", treeSize, i));
            }
        }
        GovernanceVotingVerifier.AnchorProof memory anchor =
            GovernanceVotingVerifier.AnchorProof(decisionId, batchId, ENTRY_INDEX, Rfc6962.path(entries, ENTRY_INDEX));
        assertEq(vote.path.length, treeSize == 1_000 ? 10 : 20, "vote path length");
        assertEq(anchor.path.length, 7, "batch path length");
        bytes memory cd = abi.encodeCall(GovernanceVotingVerifier.verifyVoteHash, (vote, anchor));
        uint256 used = _measure(address(this), cd);
        (bool ok, bytes memory ret) = address(v).staticcall(cd);
        assertTrue(ok && abi.decode(ret, (bool)), "vote must verify");
        _report(label, used, cd);
    }

    // ------------------------------------------------------------------ measuring

    function _measure(address from, bytes memory cd) internal returns (uint256) {
        vm.cool(address(v));
        vm.prank(from);
        (bool ok, bytes memory ret) = address(v).call(cd);
        if (!ok) {
            assembly {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return vm.lastCallGas().gasTotalUsed;
    }

    function _report(string memory label, uint256 execution, bytes memory cd) internal pure {
        uint256 calldataGas = 0;
        for (uint256 i = 0; i < cd.length; ++i) {
            calldataGas += cd[i] == 0 ? 4 : 16;
        }
        console.log("GAS %s | %d | %d", label, execution, 21_000 + calldataGas + execution);
    }
}
