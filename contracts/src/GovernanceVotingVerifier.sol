// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title GovernanceVotingVerifier
/// @notice On-chain anchor for Canopy's per-decision vote logs.
///
/// Each governance decision keeps an append-only vote log, a Merkle tree in the sense of
/// RFC 6962 / RFC 9162 (SHA-256; leaf = sha256(0x00 || data), node = sha256(0x01 || l || r)).
/// Off chain, the anchoring service periodically commits to the current root of many
/// decisions at once: it builds a second RFC 6962 tree (the batch tree) whose leaves are the
/// 72-byte anchor entries
///
///     "canopy/anchor/v1" (16 bytes ASCII) || decisionId (16) || treeSize (uint64 BE, 8) || root (32)
///
/// and records the batch tree's root here (`recordBatch`). Only the owner, the anchoring key,
/// may record. Anyone can then check that a vote (a leaf hash of a decision's vote log) is
/// covered by an anchored batch with two inclusion proofs (`verifyVoteHash`).
contract GovernanceVotingVerifier is Ownable {
    /// Inclusion of a vote in its decision's vote log (RFC 9162 inclusion proof).
    struct VoteProof {
        bytes32 leafHash;
        uint64 leafIndex;
        uint64 treeSize;
        bytes32[] path;
    }

    /// Inclusion of the decision's anchor entry in an anchored batch tree.
    struct AnchorProof {
        bytes16 decisionId;
        uint64 batchId;
        uint64 entryIndex;
        bytes32[] path;
    }

    /// One anchored batch: two storage slots.
    struct Batch {
        bytes32 root; // slot 0
        uint64 entryCount; // slot 1
        uint64 anchoredAtBlock; // slot 1
    }

    event BatchAnchored(uint64 indexed batchId, bytes32 batchRoot, uint64 entryCount);
    event DecisionAnchored(bytes16 indexed decisionId, uint64 indexed batchId);

    /// `recordBatch` with entryCount == 0.
    error EmptyBatch();
    /// `recordBatch` with entryCount != decisionIds.length.
    error EntryCountMismatch(uint64 entryCount, uint256 decisionIds);
    /// `batch` for an id that was never recorded.
    error UnknownBatch(uint64 batchId);

    /// The domain tag that starts every anchor entry.
    bytes16 internal constant ANCHOR_TAG = "canopy/anchor/v1";

    /// Number of batches recorded; the next batch id. Declared first so that it shares
    /// Ownable's slot with `_owner` (20 + 8 bytes), which `onlyOwner` has already warmed.
    uint64 private _batchCount;

    mapping(uint64 batchId => Batch) private _batches;

    /// Per-decision history of batch ids, packed 4 x uint64 per slot:
    ///   [0]      = length (bits 0..63) | ids[0] (64..127) | ids[1] (128..191) | ids[2] (192..255)
    ///   [k >= 1] = ids[3 + 4(k-1) + j] at bits 64j, j = 0..3
    /// so a decision's first anchoring writes one fresh slot, not two (length + element).
    mapping(bytes16 decisionId => mapping(uint256 slot => uint256 word)) private _history;

    constructor(address anchoringKey) Ownable(anchoringKey) {}

    // ---------------------------------------------------------------- anchoring (owner)

    /// Records the root of a batch tree over `entryCount` anchor entries, one per element of
    /// `decisionIds` (in entry order), and appends the new batch id to each decision's history.
    /// A decision listed k times gets the batch id k times.
    function recordBatch(bytes32 batchRoot, uint64 entryCount, bytes16[] calldata decisionIds)
        external
        onlyOwner
        returns (uint64 batchId)
    {
        if (entryCount == 0) revert EmptyBatch();
        if (decisionIds.length != entryCount) revert EntryCountMismatch(entryCount, decisionIds.length);
        batchId = _openBatch(batchRoot, entryCount);
        for (uint256 i = 0; i < decisionIds.length; ++i) {
            _anchor(decisionIds[i], batchId);
        }
    }

    /// Single-decision convenience: `recordBatch(batchRoot, 1, [decisionId])`.
    function recordDecisionHash(bytes16 decisionId, bytes32 batchRoot) external onlyOwner returns (uint64 batchId) {
        batchId = _openBatch(batchRoot, 1);
        _anchor(decisionId, batchId);
    }

    // ---------------------------------------------------------------- reads

    function batchCount() external view returns (uint64) {
        return _batchCount;
    }

    function batch(uint64 batchId) external view returns (bytes32 root, uint64 entryCount, uint64 anchoredAtBlock) {
        if (batchId >= _batchCount) revert UnknownBatch(batchId);
        Batch storage b = _batches[batchId];
        return (b.root, b.entryCount, b.anchoredAtBlock);
    }

    /// The batch ids that anchored `decisionId`, oldest first (empty if never anchored).
    function getHistoricalProof(bytes16 decisionId) external view returns (uint64[] memory batchIds) {
        mapping(uint256 => uint256) storage h = _history[decisionId];
        uint256 head = h[0];
        uint256 len = _lane(head, 0);
        batchIds = new uint64[](len);
        for (uint256 i = 0; i < len && i < 3; ++i) {
            batchIds[i] = _lane(head, i + 1);
        }
        uint256 word;
        for (uint256 i = 3; i < len; ++i) {
            uint256 j = i - 3;
            if (j % 4 == 0) word = h[1 + j / 4];
            batchIds[i] = _lane(word, j % 4);
        }
    }

    // ---------------------------------------------------------------- verification

    /// RFC 9162 section 2.1.3.2: the root implied by an inclusion proof of `leafHash` at
    /// `index` in a tree of `size` leaves. `ok` is false when the proof has the wrong shape
    /// for (index, size) (index >= size, too long, too short); `root` only means something
    /// when `ok` is true.
    function rootFromInclusion(bytes32 leafHash, uint64 index, uint64 size, bytes32[] calldata path)
        public
        pure
        returns (bool ok, bytes32 root)
    {
        root = leafHash;
        if (index >= size) return (false, root);
        uint64 fn = index;
        uint64 sn = size - 1;
        for (uint256 i = 0; i < path.length; ++i) {
            if (sn == 0) return (false, root);
            bytes32 p = path[i];
            if (fn & 1 == 1 || fn == sn) {
                root = _hashNode(p, root);
                if (fn & 1 == 0) {
                    while (fn & 1 == 0 && fn != 0) {
                        fn >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                root = _hashNode(root, p);
            }
            fn >>= 1;
            sn >>= 1;
        }
        ok = sn == 0;
    }

    /// True iff `vote.leafHash` is at `vote.leafIndex` of a vote log of `vote.treeSize` leaves
    /// whose root, as the anchor entry for `anchor.decisionId`, is at `anchor.entryIndex` of
    /// batch `anchor.batchId`. False (no revert) for an unknown batch.
    function verifyVoteHash(VoteProof calldata vote, AnchorProof calldata anchor) external view returns (bool) {
        if (anchor.batchId >= _batchCount) return false;
        (bool ok1, bytes32 decisionRoot) = rootFromInclusion(vote.leafHash, vote.leafIndex, vote.treeSize, vote.path);
        if (!ok1) return false;
        bytes32 entryLeaf = sha256(abi.encodePacked(bytes1(0x00), ANCHOR_TAG, anchor.decisionId, vote.treeSize, decisionRoot));
        Batch storage b = _batches[anchor.batchId];
        (bool ok2, bytes32 batchRoot) = rootFromInclusion(entryLeaf, anchor.entryIndex, b.entryCount, anchor.path);
        return ok2 && batchRoot == b.root;
    }

    // ---------------------------------------------------------------- internals

    function _openBatch(bytes32 batchRoot, uint64 entryCount) private returns (uint64 batchId) {
        batchId = _batchCount;
        _batchCount = batchId + 1;
        _batches[batchId] = Batch({root: batchRoot, entryCount: entryCount, anchoredAtBlock: uint64(block.number)});
        emit BatchAnchored(batchId, batchRoot, entryCount);
    }

    function _anchor(bytes16 decisionId, uint64 batchId) private {
        mapping(uint256 => uint256) storage h = _history[decisionId];
        uint256 head = h[0];
        uint256 len = _lane(head, 0);
        if (len < 3) {
            h[0] = (head | (uint256(batchId) << (64 * (len + 1)))) + 1;
        } else {
            uint256 j = len - 3;
            uint256 k = 1 + j / 4;
            h[k] = h[k] | (uint256(batchId) << (64 * (j % 4)));
            h[0] = head + 1;
        }
        emit DecisionAnchored(decisionId, batchId);
    }

    /// The `lane`-th uint64 of a packed history word (lane 0 = lowest bits).
    function _lane(uint256 word, uint256 lane) private pure returns (uint64) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return uint64(word >> (64 * lane)); // truncation intended: picks one 64-bit lane
    }

    /// sha256(0x01 || left || right) through the precompile. The free-memory pointer is put
    /// back afterwards so that a long path does not keep growing memory (abi.encodePacked
    /// allocates on every call).
    function _hashNode(bytes32 left, bytes32 right) private pure returns (bytes32 h) {
        uint256 fmp;
        assembly ("memory-safe") {
            fmp := mload(0x40)
        }
        h = sha256(abi.encodePacked(bytes1(0x01), left, right));
        assembly ("memory-safe") {
            mstore(0x40, fmp)
        }
    }
}
