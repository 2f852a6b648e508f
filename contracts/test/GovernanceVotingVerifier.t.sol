// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

import {GovernanceVotingVerifier} from "../src/GovernanceVotingVerifier.sol";
import {Rfc6962} from "./Rfc6962.sol";

contract GovernanceVotingVerifierTest is Test {
    GovernanceVotingVerifier internal v;
    address internal owner = makeAddr("anchoring-key");

    /// One decision's vote log in an end-to-end fixture.
    struct Decision {
        bytes16 id;
        bytes32[] leaves;
        bytes32 root;
    }

    function setUp() public {
        v = new GovernanceVotingVerifier(owner);
    }

    // ------------------------------------------------------------------ helpers

    function _path(bytes32 h0) internal pure returns (bytes32[] memory p) {
        p = new bytes32[](1);
        p[0] = h0;
    }

    function _path(bytes32 h0, bytes32 h1) internal pure returns (bytes32[] memory p) {
        p = new bytes32[](2);
        (p[0], p[1]) = (h0, h1);
    }

    function _path(bytes32 h0, bytes32 h1, bytes32 h2) internal pure returns (bytes32[] memory p) {
        p = new bytes32[](3);
        (p[0], p[1], p[2]) = (h0, h1, h2);
    }

    /// The leaf hashes of the RFC 6962 reference inputs (certificate-transparency-go's).
    function _referenceLeaves() internal pure returns (bytes32[] memory leaves) {
        bytes[8] memory data = [
            bytes(hex""),
            hex"00",
            hex"10",
            hex"2021",
            hex"3031",
            hex"40414243",
            hex"5051525354555657",
            hex"606162636465666768696a6b6c6d6e6f"
        ];
        leaves = new bytes32[](8);
        for (uint256 i = 0; i < 8; ++i) {
            leaves[i] = Rfc6962.leafHash(data[i]);
        }
    }

    /// Whether the contract accepts the vote `leaf` at `index` of decision `id`'s log of
    /// `size` leaves, anchored as entry `entry` of batch 0.
    function _verifiesInBatch0(
        bytes16 id,
        uint64 entry,
        bytes32 leaf,
        uint64 index,
        uint64 size,
        bytes32[] memory votePath,
        bytes32[] memory batchPath
    ) internal view returns (bool) {
        return v.verifyVoteHash(
            GovernanceVotingVerifier.VoteProof(leaf, index, size, votePath),
            GovernanceVotingVerifier.AnchorProof(id, 0, entry, batchPath)
        );
    }

    function _copyFlip(bytes32[] memory p, uint256 j, uint8 bit) internal pure returns (bytes32[] memory q) {
        q = new bytes32[](p.length);
        for (uint256 i = 0; i < p.length; ++i) {
            q[i] = p[i];
        }
        q[j] = q[j] ^ bytes32(uint256(1) << bit);
    }

    function _refused(bytes32 leaf, uint256 index, uint256 size, bytes32[] memory p, bytes32 root)
        internal
        view
        returns (bool)
    {
        (bool ok, bytes32 r) = v.rootFromInclusion(leaf, uint64(index), uint64(size), p);
        return !(ok && r == root);
    }

    function _decisions(bytes32 seed, uint256 d) internal pure returns (Decision[] memory ds) {
        ds = new Decision[](d);
        for (uint256 j = 0; j < d; ++j) {
            ds[j].id = bytes16(keccak256(abi.encode(seed, "id", j)));
            uint256 size = 1 + uint256(keccak256(abi.encode(seed, "size", j))) % 40;
            ds[j].leaves = Rfc6962.randomLeaves(keccak256(abi.encode(seed, "leaves", j)), size);
            ds[j].root = Rfc6962.root(ds[j].leaves);
        }
    }

    function _entryLeaves(Decision[] memory ds) internal pure returns (bytes32[] memory e) {
        e = new bytes32[](ds.length);
        for (uint256 j = 0; j < ds.length; ++j) {
            e[j] = Rfc6962.leafHash(Rfc6962.anchorEntry(ds[j].id, uint64(ds[j].leaves.length), ds[j].root));
        }
    }

    function _ids(Decision[] memory ds) internal pure returns (bytes16[] memory ids) {
        ids = new bytes16[](ds.length);
        for (uint256 j = 0; j < ds.length; ++j) {
            ids[j] = ds[j].id;
        }
    }

    function _one(bytes16 id) internal pure returns (bytes16[] memory ids) {
        ids = new bytes16[](1);
        ids[0] = id;
    }

    // ------------------------------------------------------------------ (1) proofs match MTH

    /// Every leaf's RFC 9162 PATH of a random tree of 1..64 leaves leads to the tree's MTH.
    function testFuzz_InclusionProofsLeadToMth(uint256 nSeed, bytes32 seed) public view {
        uint256 n = bound(nSeed, 1, 64);
        bytes32[] memory leaves = Rfc6962.randomLeaves(seed, n);
        bytes32 root = Rfc6962.root(leaves);
        for (uint256 i = 0; i < n; ++i) {
            bytes32[] memory p = Rfc6962.path(leaves, i);
            assertEq(p.length, Rfc6962.pathLength(i, n), "path length");
            (bool ok, bytes32 r) = v.rootFromInclusion(leaves[i], uint64(i), uint64(n), p);
            assertTrue(ok, "proof refused");
            assertEq(r, root, "root");
        }
    }

    // ------------------------------------------------------------------ (2) tampering refused

    /// A changed path element or leaf, another index, another tree size, a longer or shorter
    /// path: none leads to the root it would have to match.
    function testFuzz_TamperedProofsAreRefused(uint256 nSeed, uint256 iSeed, bytes32 seed, uint256 pick, uint8 bit)
        public
        view
    {
        uint256 n = bound(nSeed, 1, 64);
        uint256 i = bound(iSeed, 0, n - 1);
        bytes32[] memory leaves = Rfc6962.randomLeaves(seed, 64);
        bytes32 root = Rfc6962.mth(leaves, 0, n);
        bytes32[] memory p = Rfc6962.path(leaves, i, 0, n);
        assertFalse(_refused(leaves[i], i, n, p, root), "honest proof refused");

        // A flipped bit in one path element, or in the leaf.
        if (p.length > 0) {
            assertTrue(_refused(leaves[i], i, n, _copyFlip(p, pick % p.length, bit), root), "flipped path element");
        }
        assertTrue(_refused(leaves[i] ^ bytes32(uint256(1) << bit), i, n, p, root), "flipped leaf");

        // Any other index, in range or not.
        for (uint256 j = 0; j < n + 2; ++j) {
            if (j != i) assertTrue(_refused(leaves[i], j, n, p, root), "wrong index");
        }

        // Any other size: the proof does not lead to that size's root (and not to `root`
        // with ok set either when the shape differs). Sizes <= i are malformed.
        for (uint256 m = 1; m <= 64; ++m) {
            if (m == n) continue;
            if (m <= i) {
                (bool ok,) = v.rootFromInclusion(leaves[i], uint64(i), uint64(m), p);
                assertFalse(ok, "index >= size accepted");
            } else {
                assertTrue(_refused(leaves[i], i, m, p, Rfc6962.mth(leaves, 0, m)), "wrong size");
            }
        }
        (bool ok0,) = v.rootFromInclusion(leaves[i], uint64(i), 0, p);
        assertFalse(ok0, "size 0 accepted");

        // One element too many, one too few.
        bytes32[] memory longer = new bytes32[](p.length + 1);
        for (uint256 j = 0; j < p.length; ++j) {
            longer[j] = p[j];
        }
        longer[p.length] = root;
        (bool okLong,) = v.rootFromInclusion(leaves[i], uint64(i), uint64(n), longer);
        assertFalse(okLong, "longer path accepted");
        if (p.length > 0) {
            bytes32[] memory shorter = new bytes32[](p.length - 1);
            for (uint256 j = 0; j < shorter.length; ++j) {
                shorter[j] = p[j];
            }
            (bool okShort,) = v.rootFromInclusion(leaves[i], uint64(i), uint64(n), shorter);
            assertFalse(okShort, "shorter path accepted");
        }
    }

    // ------------------------------------------------------------------ (3) end to end

    /// Vote logs for 1..8 decisions, a batch over their anchor entries recorded after 0..3
    /// earlier batches: every honest vote proof verifies; every forged one does not.
    function testFuzz_EndToEnd(bytes32 seed, uint256 dSeed, uint256 priorSeed, uint8 bit) public {
        uint64 batchId = _recordPrior(seed, bound(priorSeed, 0, 3));
        Decision[] memory ds = _decisions(seed, bound(dSeed, 1, 8));
        bytes32[] memory entries = _recordFixture(ds, batchId);
        for (uint256 j = 0; j < ds.length; ++j) {
            _checkDecision(ds, entries, j, batchId, uint256(keccak256(abi.encode(seed, "index", j))), bit);
        }
    }

    /// Records `prior` unrelated single-decision batches; returns the next batch id.
    function _recordPrior(bytes32 seed, uint256 prior) internal returns (uint64) {
        for (uint256 j = 0; j < prior; ++j) {
            vm.prank(owner);
            v.recordDecisionHash(bytes16(keccak256(abi.encode(seed, "prior", j))), keccak256(abi.encode(seed, j)));
        }
        return uint64(prior);
    }

    /// Records the batch over `ds`'s anchor entries as batch `batchId`; returns the entry leaves.
    function _recordFixture(Decision[] memory ds, uint64 batchId) internal returns (bytes32[] memory entries) {
        entries = _entryLeaves(ds);
        bytes32 batchRoot = Rfc6962.root(entries); // before the prank: sha256 is a call
        bytes16[] memory ids = _ids(ds);
        vm.prank(owner);
        assertEq(v.recordBatch(batchRoot, uint64(ds.length), ids), batchId, "batch id");
        assertEq(v.batchCount(), batchId + 1, "batch count");
    }

    function _checkDecision(
        Decision[] memory ds,
        bytes32[] memory entries,
        uint256 j,
        uint64 batchId,
        uint256 indexSeed,
        uint8 bit
    ) internal view {
        uint256 index = indexSeed % ds[j].leaves.length;
        GovernanceVotingVerifier.VoteProof memory vote = GovernanceVotingVerifier.VoteProof({
            leafHash: ds[j].leaves[index],
            leafIndex: uint64(index),
            treeSize: uint64(ds[j].leaves.length),
            path: Rfc6962.path(ds[j].leaves, index)
        });
        GovernanceVotingVerifier.AnchorProof memory anchor = GovernanceVotingVerifier.AnchorProof({
            decisionId: ds[j].id,
            batchId: batchId,
            entryIndex: uint64(j),
            path: Rfc6962.path(entries, j)
        });
        assertTrue(v.verifyVoteHash(vote, anchor), "honest vote refused");
        _assertForgeriesRefused(vote, anchor, ds, bit);
    }

    function _assertForgeriesRefused(
        GovernanceVotingVerifier.VoteProof memory vote,
        GovernanceVotingVerifier.AnchorProof memory anchor,
        Decision[] memory ds,
        uint8 bit
    ) internal view {
        GovernanceVotingVerifier.VoteProof memory fv;
        GovernanceVotingVerifier.AnchorProof memory fa;
        bytes32 flip = bytes32(uint256(1) << bit);

        // Changed leaf.
        fv = GovernanceVotingVerifier.VoteProof(vote.leafHash ^ flip, vote.leafIndex, vote.treeSize, vote.path);
        assertFalse(v.verifyVoteHash(fv, anchor), "changed leaf");
        // Changed tree size (bigger; smaller where the index still fits).
        fv = GovernanceVotingVerifier.VoteProof(vote.leafHash, vote.leafIndex, vote.treeSize + 1, vote.path);
        assertFalse(v.verifyVoteHash(fv, anchor), "bigger tree size");
        if (vote.treeSize > vote.leafIndex + 1) {
            fv = GovernanceVotingVerifier.VoteProof(vote.leafHash, vote.leafIndex, vote.treeSize - 1, vote.path);
            assertFalse(v.verifyVoteHash(fv, anchor), "smaller tree size");
        }
        // Another leaf index.
        if (vote.treeSize > 1) {
            uint64 other = (vote.leafIndex + 1) % vote.treeSize;
            fv = GovernanceVotingVerifier.VoteProof(vote.leafHash, other, vote.treeSize, vote.path);
            assertFalse(v.verifyVoteHash(fv, anchor), "other leaf index");
        }
        // A changed vote-path element.
        if (vote.path.length > 0) {
            fv = GovernanceVotingVerifier.VoteProof(
                vote.leafHash, vote.leafIndex, vote.treeSize, _copyFlip(vote.path, bit % vote.path.length, bit)
            );
            assertFalse(v.verifyVoteHash(fv, anchor), "changed vote path");
        }

        // Changed decision id; another decision's id.
        fa = GovernanceVotingVerifier.AnchorProof(anchor.decisionId ^ bytes16(flip), anchor.batchId, anchor.entryIndex, anchor.path);
        if (fa.decisionId != anchor.decisionId) assertFalse(v.verifyVoteHash(vote, fa), "changed decision id");
        if (ds.length > 1) {
            bytes16 otherId = ds[(anchor.entryIndex + 1) % ds.length].id;
            fa = GovernanceVotingVerifier.AnchorProof(otherId, anchor.batchId, anchor.entryIndex, anchor.path);
            assertFalse(v.verifyVoteHash(vote, fa), "other decision id");
            uint64 otherEntry = uint64((anchor.entryIndex + 1) % ds.length);
            fa = GovernanceVotingVerifier.AnchorProof(anchor.decisionId, anchor.batchId, otherEntry, anchor.path);
            assertFalse(v.verifyVoteHash(vote, fa), "other entry index");
        }
        // Wrong batch: an earlier one, and one that does not exist (false, not a revert).
        if (anchor.batchId > 0) {
            fa = GovernanceVotingVerifier.AnchorProof(anchor.decisionId, anchor.batchId - 1, anchor.entryIndex, anchor.path);
            assertFalse(v.verifyVoteHash(vote, fa), "earlier batch");
        }
        fa = GovernanceVotingVerifier.AnchorProof(anchor.decisionId, anchor.batchId + 1, anchor.entryIndex, anchor.path);
        assertFalse(v.verifyVoteHash(vote, fa), "unknown batch");
        fa = GovernanceVotingVerifier.AnchorProof(anchor.decisionId, type(uint64).max, anchor.entryIndex, anchor.path);
        assertFalse(v.verifyVoteHash(vote, fa), "max batch id");
        // A changed batch-path element.
        if (anchor.path.length > 0) {
            fa = GovernanceVotingVerifier.AnchorProof(
                anchor.decisionId, anchor.batchId, anchor.entryIndex, _copyFlip(anchor.path, bit % anchor.path.length, bit)
            );
            assertFalse(v.verifyVoteHash(vote, fa), "changed batch path");
        }
    }

    // ------------------------------------------------------------------ (4) owner only

    function testFuzz_OnlyOwnerRecords(address stranger) public {
        vm.assume(stranger != owner);
        bytes16 id = bytes16(keccak256("decision"));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        v.recordBatch(bytes32(uint256(1)), 1, _one(id));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        v.recordDecisionHash(id, bytes32(uint256(1)));
        assertEq(v.batchCount(), 0);
        assertEq(v.getHistoricalProof(id).length, 0);

        vm.prank(owner);
        assertEq(v.recordBatch(bytes32(uint256(1)), 1, _one(id)), 0);
        vm.prank(owner);
        assertEq(v.recordDecisionHash(id, bytes32(uint256(2))), 1);
        assertEq(v.batchCount(), 2);
    }

    function test_OwnerIsTheAnchoringKeyAndCanHandOver() public {
        assertEq(v.owner(), owner);
        address next = makeAddr("next-anchoring-key");
        vm.prank(owner);
        v.transferOwnership(next);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, owner));
        vm.prank(owner);
        v.recordDecisionHash(bytes16(0), bytes32(0));
        vm.prank(next);
        assertEq(v.recordDecisionHash(bytes16(0), bytes32(0)), 0);
    }

    function test_ZeroAnchoringKeyIsRefused() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableInvalidOwner.selector, address(0)));
        new GovernanceVotingVerifier(address(0));
    }

    // ------------------------------------------------------------------ input checks, reads, events

    function test_RecordBatchChecksEntryCount() public {
        vm.startPrank(owner);
        vm.expectRevert(GovernanceVotingVerifier.EmptyBatch.selector);
        v.recordBatch(bytes32(uint256(1)), 0, new bytes16[](0));
        vm.expectRevert(abi.encodeWithSelector(GovernanceVotingVerifier.EntryCountMismatch.selector, uint64(2), uint256(1)));
        v.recordBatch(bytes32(uint256(1)), 2, _one(bytes16(0)));
        vm.expectRevert(abi.encodeWithSelector(GovernanceVotingVerifier.EntryCountMismatch.selector, uint64(1), uint256(2)));
        v.recordBatch(bytes32(uint256(1)), 1, new bytes16[](2));
        vm.stopPrank();
        assertEq(v.batchCount(), 0);
    }

    function test_BatchReadsBackAndUnknownBatchReverts() public {
        vm.expectRevert(abi.encodeWithSelector(GovernanceVotingVerifier.UnknownBatch.selector, uint64(0)));
        v.batch(0);
        vm.roll(1234);
        bytes16[] memory ids = new bytes16[](3);
        vm.prank(owner);
        v.recordBatch(keccak256("root"), 3, ids);
        (bytes32 root, uint64 count, uint64 blockNumber) = v.batch(0);
        assertEq(root, keccak256("root"));
        assertEq(count, 3);
        assertEq(blockNumber, 1234);
        vm.expectRevert(abi.encodeWithSelector(GovernanceVotingVerifier.UnknownBatch.selector, uint64(1)));
        v.batch(1);
    }

    function test_RecordBatchEmitsEvents() public {
        bytes16[] memory ids = new bytes16[](2);
        ids[0] = bytes16(keccak256("a"));
        ids[1] = bytes16(keccak256("b"));
        vm.expectEmit(address(v));
        emit GovernanceVotingVerifier.BatchAnchored(0, keccak256("root"), 2);
        vm.expectEmit(address(v));
        emit GovernanceVotingVerifier.DecisionAnchored(ids[0], 0);
        vm.expectEmit(address(v));
        emit GovernanceVotingVerifier.DecisionAnchored(ids[1], 0);
        vm.prank(owner);
        v.recordBatch(keccak256("root"), 2, ids);

        vm.expectEmit(address(v));
        emit GovernanceVotingVerifier.BatchAnchored(1, keccak256("root2"), 1);
        vm.expectEmit(address(v));
        emit GovernanceVotingVerifier.DecisionAnchored(ids[1], 1);
        vm.prank(owner);
        v.recordDecisionHash(ids[1], keccak256("root2"));
    }

    // ------------------------------------------------------------------ (5) history

    /// 1..40 batches over three decisions (each batch anchoring a random non-empty subset,
    /// single ones through recordDecisionHash): each history lists its batch ids in order.
    function testFuzz_HistoryListsBatchIdsInOrder(bytes32 seed, uint256 countSeed) public {
        uint256 batches = bound(countSeed, 1, 40);
        bytes16[3] memory ids = [bytes16(keccak256("A")), bytes16(keccak256("B")), bytes16(keccak256("C"))];
        uint64[][3] memory expected;
        uint256[3] memory lens;
        for (uint256 k = 0; k < 3; ++k) {
            expected[k] = new uint64[](batches);
        }
        for (uint256 b = 0; b < batches; ++b) {
            uint256 mask = 1 + uint256(keccak256(abi.encode(seed, b))) % 7;
            uint256 members = (mask & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1);
            bytes16[] memory batchIds = new bytes16[](members);
            uint256 m = 0;
            for (uint256 k = 0; k < 3; ++k) {
                if (mask & (1 << k) != 0) {
                    batchIds[m++] = ids[k];
                    expected[k][lens[k]++] = uint64(b);
                }
            }
            vm.prank(owner);
            uint64 got = members == 1
                ? v.recordDecisionHash(batchIds[0], keccak256(abi.encode(b)))
                : v.recordBatch(keccak256(abi.encode(b)), uint64(members), batchIds);
            assertEq(got, b);
        }
        for (uint256 k = 0; k < 3; ++k) {
            uint64[] memory h = v.getHistoricalProof(ids[k]);
            assertEq(h.length, lens[k], "history length");
            for (uint256 i = 0; i < h.length; ++i) {
                assertEq(h[i], expected[k][i], "history entry");
            }
        }
        assertEq(v.getHistoricalProof(bytes16(keccak256("never"))).length, 0);
    }

    /// Batch ids beyond 2^32 and long histories (all four lanes of several words).
    function test_HistoryPacksLargeIdsAndLongHistories() public {
        bytes16 id = bytes16(keccak256("long"));
        for (uint256 b = 0; b < 19; ++b) {
            vm.prank(owner);
            v.recordDecisionHash(id, bytes32(b));
        }
        uint64[] memory h = v.getHistoricalProof(id);
        assertEq(h.length, 19);
        for (uint256 i = 0; i < 19; ++i) {
            assertEq(h[i], i);
        }
        // Jump the batch counter (slot 0, above Ownable's 20-byte owner) to near 2^64.
        bytes32 slot0 = vm.load(address(v), bytes32(0));
        uint64 high = type(uint64).max - 5;
        vm.store(address(v), bytes32(0), bytes32((uint256(high) << 160) | uint256(uint160(uint256(slot0)))));
        assertEq(v.owner(), owner, "owner kept");
        assertEq(v.batchCount(), high, "counter moved");
        vm.prank(owner);
        assertEq(v.recordDecisionHash(id, bytes32(0)), high);
        h = v.getHistoricalProof(id);
        assertEq(h.length, 20);
        assertEq(h[19], high);
        assertEq(h[18], 18);
    }

    /// A decision listed twice in one batch (two checkpoints) gets the batch id twice.
    function test_DecisionTwiceInOneBatch() public {
        bytes16[] memory ids = new bytes16[](2);
        ids[0] = bytes16(keccak256("x"));
        ids[1] = ids[0];
        vm.prank(owner);
        v.recordBatch(bytes32(uint256(7)), 2, ids);
        uint64[] memory h = v.getHistoricalProof(ids[0]);
        assertEq(h.length, 2);
        assertEq(h[0], 0);
        assertEq(h[1], 0);
    }

    // ------------------------------------------------------------------ (6) known answers

    /// The RFC 6962 reference leaves used by certificate-transparency-go (and by
    /// chain/tests/merkle.rs): roots of the first 1..8 leaves and a published audit path.
    function test_Rfc6962ReferenceVectors() public view {
        bytes32[8] memory roots = [
            bytes32(0x6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d),
            0xfac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125,
            0xaeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77,
            0xd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7,
            0x4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4,
            0x76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef,
            0xddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c,
            0x5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328
        ];
        bytes32[] memory leaves = _referenceLeaves();
        for (uint256 n = 1; n <= 8; ++n) {
            assertEq(Rfc6962.mth(leaves, 0, n), roots[n - 1], "reference root");
        }
        assertEq(Rfc6962.root(leaves), 0x5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328);

        // certificate-transparency-go's inclusion vector: leaf 5 of 8.
        bytes32[] memory p = Rfc6962.path(leaves, 5);
        assertEq(p.length, 3);
        assertEq(p[0], 0xbc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b);
        assertEq(p[1], 0xca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0);
        assertEq(p[2], 0xd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7);
        (bool ok, bytes32 r) = v.rootFromInclusion(leaves[5], 5, 8, p);
        assertTrue(ok);
        assertEq(r, roots[7]);
    }

    /// Anchor entries and a batch over them, with every value computed independently (Python
    /// hashlib): pins the 72-byte entry encoding and the two-level verification.
    function test_AnchorKnownAnswer() public {
        bytes32[] memory leaves = _referenceLeaves();
        bytes16 a = 0x000102030405060708090a0b0c0d0e0f;
        bytes16 b = 0xfffefdfcfbfaf9f8f7f6f5f4f3f2f1f0;
        bytes memory entry0 = Rfc6962.anchorEntry(a, 8, Rfc6962.mth(leaves, 0, 8));
        assertEq(
            entry0,
            hex"63616e6f70792f616e63686f722f7631000102030405060708090a0b0c0d0e0f00000000000000085dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assertEq(entry0.length, 72);
        assertEq(Rfc6962.leafHash(entry0), 0x53cc40c3cbcc415f39f0a9f3489b36015bbd23b61af1374e5c5015806c47cb31);

        // Batch: [a @ 8, b @ 3, a @ 5].
        bytes32[] memory entries = new bytes32[](3);
        entries[0] = Rfc6962.leafHash(entry0);
        entries[1] = Rfc6962.leafHash(Rfc6962.anchorEntry(b, 3, Rfc6962.mth(leaves, 0, 3)));
        entries[2] = Rfc6962.leafHash(Rfc6962.anchorEntry(a, 5, Rfc6962.mth(leaves, 0, 5)));
        bytes32 batchRoot = 0x07fb2aa32de810dcc38547797de6a131e3e5e9d154bc8a9adc2b22dc5682add5;
        assertEq(Rfc6962.root(entries), batchRoot);

        bytes16[] memory ids = new bytes16[](3);
        (ids[0], ids[1], ids[2]) = (a, b, a);
        vm.prank(owner);
        assertEq(v.recordBatch(batchRoot, 3, ids), 0);

        // Vote 5 of a's log at size 8, through entry 0.
        bytes32[] memory votePath = _path(
            0xbc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b,
            0xca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0,
            0xd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7
        );
        bytes32[] memory batchPath = _path(
            0x5b8826695d7cf7c4993a164caf88619bdbc719b279d065313a903a7edb5ffd3e,
            0x208a6e41f9e4870facea6b7f7f0fbacefe75f32d5543cd778cf8f5585d310132
        );
        assertTrue(_verifiesInBatch0(a, 0, leaves[5], 5, 8, votePath, batchPath));

        // Vote 2 of b's log at size 3, through entry 1.
        votePath = _path(0xfac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125);
        batchPath = _path(
            0x53cc40c3cbcc415f39f0a9f3489b36015bbd23b61af1374e5c5015806c47cb31,
            0x208a6e41f9e4870facea6b7f7f0fbacefe75f32d5543cd778cf8f5585d310132
        );
        assertTrue(_verifiesInBatch0(b, 1, leaves[2], 2, 3, votePath, batchPath));

        // Vote 2 of a's log at size 5, through entry 2.
        votePath = _path(
            0x07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7,
            0xfac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125,
            0xbc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b
        );
        batchPath = _path(0x7f3fa1d9f289f3f540ee2ac6f645d2899e499b3343975aecc55268b5c09b4d8f);
        assertTrue(_verifiesInBatch0(a, 2, leaves[2], 2, 5, votePath, batchPath));
        // The same vote claimed for b, or at entry 0, is refused.
        assertFalse(_verifiesInBatch0(b, 2, leaves[2], 2, 5, votePath, batchPath));
        assertFalse(_verifiesInBatch0(a, 0, leaves[2], 2, 5, votePath, batchPath));
    }
}
