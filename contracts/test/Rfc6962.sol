// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// Test-side RFC 6962 Merkle tree, written straight from the RFC's recursive definitions
/// (RFC 6962 section 2.1 / RFC 9162 section 2.1.1 MTH and 2.1.3.1 PATH), independent of
/// the contract's iterative verifier.
library Rfc6962 {
    bytes16 internal constant ANCHOR_TAG = "canopy/anchor/v1";

    /// sha256(0x00 || data)
    function leafHash(bytes memory data) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x00), data));
    }

    /// sha256(0x01 || left || right)
    function nodeHash(bytes32 left, bytes32 right) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x01), left, right));
    }

    /// The largest power of two smaller than n (n >= 2).
    function split(uint256 n) internal pure returns (uint256 k) {
        require(n >= 2, "split: n < 2");
        k = 1;
        while (k << 1 < n) k <<= 1;
    }

    /// MTH over the leaf hashes `leaves[lo:hi]` (non-empty).
    function mth(bytes32[] memory leaves, uint256 lo, uint256 hi) internal pure returns (bytes32) {
        uint256 n = hi - lo;
        require(n >= 1, "mth: empty range");
        if (n == 1) return leaves[lo];
        uint256 k = split(n);
        return nodeHash(mth(leaves, lo, lo + k), mth(leaves, lo + k, hi));
    }

    /// MTH over all of `leaves`.
    function root(bytes32[] memory leaves) internal pure returns (bytes32) {
        return mth(leaves, 0, leaves.length);
    }

    /// MTH over the first `n` of `leaves`.
    function rootOfPrefix(bytes32[] memory leaves, uint256 n) internal pure returns (bytes32) {
        return mth(leaves, 0, n);
    }

    /// PATH(m, leaves[lo:hi]): the audit path of leaf m (relative to lo), deepest sibling first.
    function path(bytes32[] memory leaves, uint256 m, uint256 lo, uint256 hi) internal pure returns (bytes32[] memory p) {
        uint256 n = hi - lo;
        require(m < n, "path: index out of range");
        if (n == 1) return new bytes32[](0);
        uint256 k = split(n);
        bytes32[] memory sub;
        bytes32 sibling;
        if (m < k) {
            sub = path(leaves, m, lo, lo + k);
            sibling = mth(leaves, lo + k, hi);
        } else {
            sub = path(leaves, m - k, lo + k, hi);
            sibling = mth(leaves, lo, lo + k);
        }
        p = new bytes32[](sub.length + 1);
        for (uint256 i = 0; i < sub.length; ++i) {
            p[i] = sub[i];
        }
        p[sub.length] = sibling;
    }

    /// PATH(m, leaves) over the whole array.
    function path(bytes32[] memory leaves, uint256 m) internal pure returns (bytes32[] memory) {
        return path(leaves, m, 0, leaves.length);
    }

    /// The length of PATH(m, D[n]).
    function pathLength(uint256 m, uint256 n) internal pure returns (uint256 len) {
        require(m < n, "pathLength: index out of range");
        while (n > 1) {
            uint256 k = split(n);
            if (m < k) {
                n = k;
            } else {
                m -= k;
                n -= k;
            }
            ++len;
        }
    }

    /// The 72-byte anchor entry: tag || decision id || tree size (uint64 BE) || root.
    function anchorEntry(bytes16 decisionId, uint64 treeSize, bytes32 decisionRoot) internal pure returns (bytes memory) {
        return abi.encodePacked(ANCHOR_TAG, decisionId, treeSize, decisionRoot);
    }

    /// `n` distinct pseudo-random leaf hashes derived from `seed`.
    function randomLeaves(bytes32 seed, uint256 n) internal pure returns (bytes32[] memory leaves) {
        leaves = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            leaves[i] = leafHash(abi.encode(seed, i));
        }
    }
}
