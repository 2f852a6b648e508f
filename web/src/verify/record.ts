// Checks a vote's inclusion proof in the browser, trusting no server: the same checks as
// `canopy verify` (chain/src/merkle.rs, chain/src/note.rs), on WebCrypto SHA-256 and
// Ed25519 (noble, over WebCrypto's SHA-512).
//
//   receipt.leaf ──SHA-256(0x00‖leaf)──▶ leaf_hash ──audit path──▶ root
//                                                                    │ equal?
//   checkpoint note: "origin\nsize\nbase64(root)\n" + "— name base64(keyhash‖sig)"
//                    signature checked with the record key `name+hex(keyhash)+base64(0x01‖pk)`
import * as ed from "@noble/ed25519";

export type Bytes = Uint8Array<ArrayBuffer>;

export function hexToBytes(hex: string): Bytes {
  const clean = hex.trim().toLowerCase();
  if (clean.length % 2 !== 0 || /[^0-9a-f]/.test(clean)) throw new Error("not hex");
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function bytesToHex(bytes: Bytes): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function base64ToBytes(b64: string): Bytes {
  const bin = atob(b64.trim());
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function equal(a: Bytes, b: Bytes): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function concat(...parts: Bytes[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function cryptoAvailable(): boolean {
  return typeof crypto !== "undefined" && typeof crypto.subtle !== "undefined";
}

export async function sha256(...parts: Bytes[]): Promise<Bytes> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
}

/** RFC 9162 leaf hash: SHA-256(0x00 ‖ leaf). */
export const leafHash = (leaf: Bytes) => sha256(Uint8Array.of(0), leaf);
/** RFC 9162 interior node: SHA-256(0x01 ‖ left ‖ right). */
export const nodeHash = (l: Bytes, r: Bytes) => sha256(Uint8Array.of(1), l, r);

/** The root an audit path (leaf to root) leads to, as chain/src/merkle.rs root_from_inclusion. */
export async function rootFromInclusion(
  leaf: Bytes,
  index: number,
  size: number,
  proof: Bytes[],
): Promise<Bytes> {
  if (index >= size) throw new VerifyError("index_out_of_range", `index ${index} is outside a tree of ${size}`);
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) throw new VerifyError("bad_proof", "the inclusion proof is too long");
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new VerifyError("bad_proof", "the inclusion proof is too short");
  return r;
}

export class VerifyError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface VerifierKey {
  name: string;
  keyHash: Bytes;
  publicKey: Bytes;
}

/** Parses `name+hex(keyhash)+base64(0x01‖public key)` and checks the hash matches the key. */
export async function parseVerifierKey(key: string): Promise<VerifierKey> {
  // The name holds no '+', the hash is hex; the base64 key may itself hold '+'.
  const match = /^([^+\s]+)\+([0-9a-fA-F]{8})\+([A-Za-z0-9+/]+=*)$/.exec(key.trim());
  if (!match) throw new VerifyError("bad_key", "the key is not name+hash+key");
  const [, name, hashHex, b64] = match;
  let raw: Bytes;
  let keyHash: Bytes;
  try {
    raw = base64ToBytes(b64);
    keyHash = hexToBytes(hashHex);
  } catch {
    throw new VerifyError("bad_key", "the key is not hex and base64");
  }
  if (raw.length !== 33 || raw[0] !== 0x01 || keyHash.length !== 4)
    throw new VerifyError("bad_key", "the key is not an Ed25519 note key");
  const publicKey = raw.slice(1);
  const expected = (await sha256(new TextEncoder().encode(name + "\n"), Uint8Array.of(1), publicKey)).slice(0, 4);
  if (!equal(expected, keyHash)) throw new VerifyError("bad_key", "the key's hash does not match its public key");
  return { name, keyHash, publicKey };
}

export interface Checkpoint {
  origin: string;
  size: number;
  root: Bytes;
}

/** Opens a C2SP signed note and checks a signature by `key` on its body (chain/src/note.rs). */
export async function verifyCheckpoint(note: string, key: VerifierKey): Promise<Checkpoint> {
  const split = note.indexOf("\n\n");
  if (split < 0) throw new VerifyError("bad_checkpoint", "no blank line between the body and the signatures");
  const body = note.slice(0, split) + "\n";
  const signatures = note.slice(split + 2).split("\n").filter((l) => l.length > 0);
  let verified = false;
  for (const line of signatures) {
    if (!line.startsWith("\u2014 ")) throw new VerifyError("bad_checkpoint", "a signature line does not start with an em dash");
    const rest = line.slice(2);
    const space = rest.indexOf(" ");
    if (space < 0) throw new VerifyError("bad_checkpoint", "a signature line has no signature");
    const name = rest.slice(0, space);
    let blob: Bytes;
    try {
      blob = base64ToBytes(rest.slice(space + 1));
    } catch {
      throw new VerifyError("bad_checkpoint", "a signature is not base64");
    }
    if (name !== key.name || blob.length !== 68 || !equal(blob.slice(0, 4), key.keyHash)) continue;
    const ok = await ed.verifyAsync(blob.slice(4), new TextEncoder().encode(body), key.publicKey).catch(() => false);
    if (!ok) throw new VerifyError("bad_signature", "the checkpoint's signature does not verify with the record key");
    verified = true;
  }
  if (!verified) throw new VerifyError("bad_signature", "no signature by the record key on the checkpoint");
  const lines = body.split("\n");
  const origin = lines[0];
  const size = Number(lines[1]);
  if (!origin) throw new VerifyError("bad_checkpoint", "no origin line");
  if (!/^\d+$/.test(lines[1] ?? "")) throw new VerifyError("bad_checkpoint", "the size line is not a number");
  let root: Bytes;
  try {
    root = base64ToBytes(lines[2] ?? "");
  } catch {
    throw new VerifyError("bad_checkpoint", "the root line is not base64");
  }
  if (root.length !== 32) throw new VerifyError("bad_checkpoint", "the root line is not 32 bytes of base64");
  return { origin, size, root };
}

export interface ProofResponse {
  decision_id: string;
  leaf_hash: string;
  index: number;
  tree_size: number;
  proof: string[];
  checkpoint: string;
  bundle?: string;
  key: string;
  anchor?: AnchorInfo | null;
}

export interface AnchorInfo {
  batch_id: number;
  target: string;
  batch_root: string;
  entry_index: number;
  entry_count: number;
  path: string[];
  block_number?: number | null;
  chain_batch_id?: number | null;
  tx_hash?: string | null;
  batch_note?: string | null;
}

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface Verdict {
  ok: boolean;
  checks: Check[];
  failure?: { code: string; message: string };
  checkpoint?: Checkpoint;
  anchor?: AnchorInfo | null;
}

const ANCHOR_TAG = new TextEncoder().encode("canopy/anchor/v1");

/** A UUID's 16 bytes. */
function uuidBytes(id: string): Bytes {
  const hex = id.replace(/-/g, "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new VerifyError("decision_mismatch", "the decision id is not a UUID");
  return hexToBytes(hex);
}

/**
 * The checkpoint's entry in its anchor batch (chain/src/anchor.rs: tag ‖ decision id ‖ tree
 * size, big-endian ‖ root, 72 bytes) leads by the anchor path to the batch root anchored.
 */
async function checkAnchor(anchor: AnchorInfo, decisionId: string, checkpoint: Checkpoint): Promise<void> {
  const entry = new Uint8Array(72);
  entry.set(ANCHOR_TAG, 0);
  entry.set(uuidBytes(decisionId), 16);
  new DataView(entry.buffer).setBigUint64(32, BigInt(checkpoint.size));
  entry.set(checkpoint.root, 40);
  let path: Bytes[];
  let batchRoot: Bytes;
  try {
    path = anchor.path.map(hexToBytes);
    batchRoot = hexToBytes(anchor.batch_root);
  } catch {
    throw new VerifyError("bad_anchor", "the anchor path is not hex");
  }
  if (path.some((p) => p.length !== 32) || batchRoot.length !== 32)
    throw new VerifyError("bad_anchor", "an anchor hash is not 32 bytes");
  const root = await rootFromInclusion(await leafHash(entry), anchor.entry_index, anchor.entry_count, path);
  if (!equal(root, batchRoot))
    throw new VerifyError("bad_anchor", "the anchor path leads to another batch root than the one anchored");
}

/**
 * Every check a voter can make in the browser, in order, stopping at the first that fails:
 * the leaf (if the receipt has it) hashes to the leaf hash, the proof is for that leaf and
 * decision, the key is the one the voter trusts, its hash matches, the checkpoint is signed
 * by it and names this decision's log, the audit path leads to its root, and (once
 * anchored) the checkpoint's entry leads by the anchor path to the batch root anchored.
 */
export async function verifyProof(input: {
  proof: ProofResponse;
  decisionId: string;
  leafHashHex: string;
  leafHex?: string;
  trustedKey?: string;
}): Promise<Verdict> {
  const checks: Check[] = [];
  const { proof } = input;
  const pass = (name: string, detail: string) => checks.push({ name, ok: true, detail });
  try {
    if (!cryptoAvailable())
      throw new VerifyError("no_webcrypto", "this browser offers no WebCrypto here (it needs https or localhost)");
    const wanted = hexToBytes(input.leafHashHex);
    if (input.leafHex) {
      const computed = await leafHash(hexToBytes(input.leafHex));
      if (!equal(computed, wanted))
        throw new VerifyError("leaf_mismatch", "the receipt's leaf does not hash to its leaf hash");
      pass("Leaf", "the receipt's leaf hashes to its leaf hash (SHA-256 of 0x00 and the leaf)");
    }
    let proofLeaf: Bytes;
    try {
      proofLeaf = hexToBytes(proof.leaf_hash);
    } catch {
      throw new VerifyError("bad_proof", "the proof's leaf hash is not hex");
    }
    if (!equal(proofLeaf, wanted)) throw new VerifyError("leaf_mismatch", "the proof is for another leaf");
    if (proof.decision_id !== input.decisionId) throw new VerifyError("decision_mismatch", "the proof is for another decision");
    if (input.trustedKey && input.trustedKey.trim() !== proof.key.trim())
      throw new VerifyError("untrusted_key", "the proof names another key than the record key you trust");
    const key = await parseVerifierKey(proof.key);
    pass("Key", `${key.name}+${bytesToHex(key.keyHash)}${input.trustedKey ? ", the key you trust" : ""}`);
    const checkpoint = await verifyCheckpoint(proof.checkpoint, key);
    pass("Signature", `the checkpoint (size ${checkpoint.size}) is signed by ${key.name}`);
    if (!checkpoint.origin.endsWith(`/decision/${input.decisionId}`))
      throw new VerifyError("origin_mismatch", `the checkpoint is of another log (${checkpoint.origin})`);
    if (checkpoint.size !== proof.tree_size)
      throw new VerifyError("size_mismatch", `the proof is for size ${proof.tree_size}, the checkpoint for ${checkpoint.size}`);
    let path: Bytes[];
    try {
      path = proof.proof.map(hexToBytes);
    } catch {
      throw new VerifyError("bad_proof", "the audit path is not hex");
    }
    if (path.some((p) => p.length !== 32)) throw new VerifyError("bad_proof", "an audit path hash is not 32 bytes");
    const root = await rootFromInclusion(wanted, proof.index, proof.tree_size, path);
    if (!equal(root, checkpoint.root))
      throw new VerifyError("bad_proof", "the inclusion proof leads to another root than the signed checkpoint's");
    pass("Inclusion", `leaf ${proof.index} of ${proof.tree_size}: the audit path (${path.length} hash${path.length === 1 ? "" : "es"}) leads to the signed root`);
    if (proof.anchor) {
      await checkAnchor(proof.anchor, input.decisionId, checkpoint);
      pass("Anchor", `the checkpoint is entry ${proof.anchor.entry_index} of ${proof.anchor.entry_count} in batch ${proof.anchor.batch_id}: its path leads to the batch root that was anchored`);
    }
    return { ok: true, checks, checkpoint, anchor: proof.anchor ?? null };
  } catch (e) {
    const err = e instanceof VerifyError ? e : new VerifyError("error", String((e as Error)?.message ?? e));
    checks.push({ name: "Failed", ok: false, detail: `${err.code}: ${err.message}` });
    return { ok: false, checks, failure: { code: err.code, message: err.message } };
  }
}
