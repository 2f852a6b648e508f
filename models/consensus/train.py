#!/usr/bin/env python3
"""Train Canopy's consensus prediction model and regenerate everything kept beside it.

Run from the repository root, in a venv made from requirements.txt:

    python3 -m venv ~/.cache/canopy/consensus-venv
    ~/.cache/canopy/consensus-venv/bin/pip install -r models/consensus/requirements.txt
    ~/.cache/canopy/consensus-venv/bin/python models/consensus/train.py [--history FILE.csv]

Writes (all under models/consensus/):
  consensus-1.onnx, consensus-2.onnx  the two versions: features float32 [N,14] -> label, probabilities
  evaluation.json, EVALUATION.md      held-out figures at 10/50/90 % of the window, naive-rule baseline
  README.md                           only the evaluation table between its markers
  testdata/parity.csv                 held-out feature rows and both versions' P(wins), for the Rust test

For an open decision, one row per (decision, option, snapshot) holds f0..f13 (README.md); the
model gives P(this option wins at close); the caller normalises one decision's rows to sum 1.

Everything is a function of the seeds below (and of the --history file, if one is given): a
second run gives byte-identical files, except the wall-clock timings in EVALUATION.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TESTDATA = HERE / "testdata"

# ---------------------------------------------------------------------------------------------
# Seeds and sizes
# ---------------------------------------------------------------------------------------------
TRAIN_SEED = 20260715  # synthetic training decisions (and the validation split that tunes v2)
HELDOUT_SEED = 5550123  # held-out decisions: generated separately, never used for fitting or tuning
MODEL_SEED = 11  # LightGBM

TRAIN_DECISIONS = 20_000
VALIDATION_FRACTION = 0.2  # the last 20 % of the training decisions tune version 2
HELDOUT_DECISIONS = 2_500
TRAIN_SNAPSHOTS = 20  # per training decision: one elapsed fraction drawn in each twentieth of [0, 1)
EVAL_ELAPSED = (0.1, 0.5, 0.9)
N_THREADS = 2  # LightGBM threads: fixed so that results do not depend on the machine

WEIGHT_SCALE = 1_000_000  # weights are integer millionths, as in canopy-schemas
COMPONENTS = ["democratic", "expert", "community", "environmental"]
DEFAULT_WEIGHTS = (400_000, 300_000, 200_000, 100_000)
N_AGENTS = 4
LOG_LOSS_CLIP = 1e-6
ECE_BINS = 10

FEATURES = [
    ("f0", "elapsed"),
    ("f1", "composite"),
    ("f2", "margin"),
    ("f3", "democratic_share"),
    ("f4", "expert_share"),
    ("f5", "community_share"),
    ("f6", "environmental_share"),
    ("f7", "log_voters"),
    ("f8", "options"),
    ("f9", "agent_score"),
    ("f10", "w_democratic"),
    ("f11", "w_expert"),
    ("f12", "w_community"),
    ("f13", "w_environmental"),
]
N_FEATURES = len(FEATURES)

# Version 1: small (fixed shape, learning rate picked on the validation split). Version 2: its
# shape tuned on the validation split, within a size budget.
V1_TREES, V1_LEAVES = 40, 7
V1_LEARNING_RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
V2_LEARNING_RATE = 0.05
V2_LEAVES = (7, 15, 31)
V2_TREES = (100, 150, 200, 250, 300, 400, 500)
V2_MAX_NODES = 9_000  # trees x (2 x leaves - 1): keeps the ONNX file under ~1 MB
COMMON_PARAMS = dict(
    objective="binary",
    min_child_samples=200,
    reg_lambda=1.0,
    max_bin=255,
    subsample=1.0,
    colsample_bytree=1.0,
    deterministic=True,
    force_row_wise=True,
    num_threads=N_THREADS,
    random_state=MODEL_SEED,
    verbose=-1,
)


# ---------------------------------------------------------------------------------------------
# Synthetic decisions
# ---------------------------------------------------------------------------------------------
@dataclass
class Decision:
    options: int
    weights: np.ndarray  # int64 [4], millionths, sum 1 000 000
    t: np.ndarray  # float64 [V], vote times as fractions of the window, sorted
    comp: np.ndarray  # int64 [V], component of each vote
    opt: np.ndarray  # int64 [V], option of each vote
    w: np.ndarray  # int64 [V], vote weight in millionths
    agent_t: np.ndarray  # float64 [A], when each agent voted (sorted)
    agent_s: np.ndarray  # float64 [A, K], each agent's assessed score per option, 3 decimals
    winner: int
    swing: bool  # a late swing was planted


def draw_weights(rng) -> np.ndarray:
    """The decision's component weights in millionths (multiples of 0.05, sum exactly 1)."""
    r = rng.random()
    if r < 0.45:
        return np.array(DEFAULT_WEIGHTS, dtype=np.int64)
    alpha = np.array([4.0, 3.0, 2.0, 1.5])
    if r >= 0.80:  # one component switched off: usually environmental, expert or community
        alpha[rng.choice(4, p=[0.1, 0.3, 0.3, 0.3])] = 0.0
    x = np.zeros(4)
    on = alpha > 0
    x[on] = rng.dirichlet(alpha[on]) * 20
    units = np.floor(x).astype(np.int64)
    rest = 20 - int(units.sum())
    for i in np.argsort(-(x - units), kind="stable")[:rest]:  # largest remainders
        units[i] += 1
    return units * 50_000


def arrival_profile(rng, grid: np.ndarray) -> np.ndarray:
    """A bursty arrival intensity over the window: a front- or back-loaded base, bursts after
    news or campaigns, sometimes a last-minute surge."""
    a, b = rng.uniform(0.7, 1.6), rng.uniform(0.8, 2.6)
    lam = grid ** (a - 1) * (1 - grid) ** (b - 1)
    lam = lam / lam.mean()
    for _ in range(rng.poisson(1.5)):
        t0, tau = rng.uniform(0, 1), rng.uniform(0.01, 0.08)
        lam = lam + rng.lognormal(0.5, 0.7) * np.where(grid >= t0, np.exp(-(grid - t0) / tau), 0.0)
    if rng.random() < 0.4:
        lam = lam + rng.uniform(0.5, 3.0) * np.exp(-(1 - grid) / 0.03)
    return lam


def sample_times(rng, lam: np.ndarray, n: int) -> np.ndarray:
    """n arrival times in [0, 1) from an intensity on a regular grid of bins."""
    bins = len(lam)
    counts = rng.multinomial(n, lam / lam.sum())
    start = np.repeat(np.arange(bins), counts)
    return (start + rng.random(n)) / bins


def softmax_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def choose(rng, p: np.ndarray) -> np.ndarray:
    """One categorical draw per row of p."""
    u = rng.random(len(p))
    c = np.cumsum(p, axis=1)
    return np.minimum((u[:, None] > c).sum(axis=1), p.shape[1] - 1)


BINS = 400
GRID = (np.arange(BINS) + 0.5) / BINS
DRIFT_STEPS = 64
P_SWING = 0.25


def gen_decision(rng) -> Decision:
    K = int(rng.choice([2, 3, 4, 5], p=[0.35, 0.30, 0.20, 0.15]))
    weights = draw_weights(rng)

    # latent preferences: a common appeal per option, seen differently by each component
    spread = rng.uniform(0.6, 2.2)  # small: a close contest; large: one-sided
    appeal = rng.normal(size=K)
    rho = rng.uniform(0.6, 0.95)
    z = rho * appeal + math.sqrt(1 - rho * rho) * rng.normal(size=(4, K))  # [component, option]
    u = z * spread
    z_env = z[3]

    # drift over the window: a random walk per option, and sometimes a late swing
    sigma = rng.uniform(0.0, 0.3)
    steps = rng.normal(size=(DRIFT_STEPS, K)) * sigma / math.sqrt(DRIFT_STEPS)
    walk = np.vstack([np.zeros((1, K)), np.cumsum(steps, axis=0)])  # [DRIFT_STEPS + 1, K]

    def drift(t: np.ndarray) -> np.ndarray:
        x = t * DRIFT_STEPS
        i = np.minimum(np.floor(x).astype(np.int64), DRIFT_STEPS - 1)
        f = (x - i)[:, None]
        return walk[i] * (1 - f) + walk[i + 1] * f

    swing = bool(rng.random() < P_SWING)
    lam = arrival_profile(rng, GRID)
    if swing:
        t_s = rng.uniform(0.2, 0.7)
        ramp = rng.uniform(0.02, 0.15)
        now = u[0] + drift(np.array([t_s]))[0]
        lead = int(np.argmax(now))
        others = np.array([k for k in range(K) if k != lead])
        # what moves voters late is often news about the environmental case
        target = int(rng.choice(others, p=softmax_rows(1.5 * z_env[others])))
        size = (now[lead] - now[target]) + rng.uniform(0.8, 3.0)
        lam = lam + rng.uniform(1.0, 5.0) * np.where(GRID >= t_s, np.exp(-(GRID - t_s) / rng.uniform(0.03, 0.15)), 0.0)

        def shift(t: np.ndarray) -> np.ndarray:
            out = np.zeros((len(t), K))
            out[:, target] = size * np.clip((t - t_s) / ramp, 0.0, 1.0)
            return out
    else:

        def shift(t: np.ndarray) -> np.ndarray:
            return np.zeros((len(t), K))

    # turnout: tens to a few thousand voters
    n_dem = int(round(math.exp(rng.uniform(math.log(8), math.log(2500)))))
    n_exp = int(round(n_dem * rng.uniform(0.02, 0.1))) + int(rng.integers(2, 12))
    n_com = int(round(n_dem * rng.uniform(0.05, 0.2))) + int(rng.integers(2, 15))

    t_dem = sample_times(rng, lam, n_dem)
    t_com = sample_times(rng, 0.5 * lam / lam.mean() + 0.5, n_com)
    mode = rng.random()
    if mode < 1 / 3:  # experts early
        t_exp = rng.beta(1.2, 3.0, size=n_exp)
    elif mode < 2 / 3:  # experts late
        t_exp = rng.beta(3.0, 1.2, size=n_exp)
    else:  # with the citizens
        t_exp = sample_times(rng, lam, n_exp)

    def vote(t: np.ndarray, base: np.ndarray, temp: float, drift_k: float) -> np.ndarray:
        if len(t) == 0:
            return np.zeros(0, dtype=np.int64)
        p = softmax_rows(temp * base[None, :] + drift_k * (drift(t) + shift(t)))
        return choose(rng, p)

    o_dem = vote(t_dem, u[0], 1.0, 1.0)
    o_exp = vote(t_exp, u[1], 1.5, 0.4)
    o_com = vote(t_com, u[2], 1.2, 0.8)
    w_exp = rng.integers(50, 301, size=n_exp) * 10_000  # expertise 0.50 .. 3.00
    w_com = rng.integers(50, 201, size=n_com) * 10_000  # impact 0.50 .. 2.00

    # the analysis agents: each assesses every option once, early, and votes for its best
    votes_agent = rng.random(N_AGENTS) < 0.92
    agent_t = np.sort(rng.uniform(0.0, 0.1, size=N_AGENTS)[votes_agent])
    agent_s = np.round(np.tanh(0.8 * z_env[None, :] + 0.5 * rng.normal(size=(len(agent_t), K))), 3)
    o_agent = np.argmax(agent_s, axis=1) if len(agent_t) else np.zeros(0, dtype=np.int64)

    t = np.concatenate([t_dem, t_exp, t_com, agent_t])
    comp = np.concatenate([np.full(n_dem, 0), np.full(n_exp, 1), np.full(n_com, 2), np.full(len(agent_t), 3)]).astype(np.int64)
    opt = np.concatenate([o_dem, o_exp, o_com, o_agent]).astype(np.int64)
    w = np.concatenate([np.full(n_dem, WEIGHT_SCALE), w_exp, w_com, np.full(len(agent_t), WEIGHT_SCALE)]).astype(np.int64)
    order = np.argsort(t, kind="stable")
    d = Decision(K, weights, t[order], comp[order], opt[order], w[order], agent_t, agent_s, -1, bool(swing))
    final = snapshot_state(d, np.array([1.0]))
    d.winner = int(np.argmax(final["composite"][0]))
    return d


def gen_decisions(seed: int, n: int) -> list[Decision]:
    rng = np.random.default_rng(seed)
    return [gen_decision(rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Features: what the Rust side computes from the votes so far
# ---------------------------------------------------------------------------------------------
def snapshot_state(d: Decision, elapsed: np.ndarray) -> dict:
    """Per snapshot (votes with time < elapsed): shares [S,4,K], composite [S,K], voters [S],
    agent score [S,K]. Weighted sums are exact integers (millionths); a share is one division
    of two integers in float64; composite = sum over components in order of (w_c / 1e6) x share."""
    K = d.options
    onehot = np.zeros((len(d.t) + 1, 4, K), dtype=np.int64)
    onehot[np.arange(1, len(d.t) + 1), d.comp, d.opt] = d.w
    cum = np.cumsum(onehot, axis=0)
    n = np.searchsorted(d.t, elapsed, side="left")
    S = cum[n]  # [S, 4, K]
    tot = S.sum(axis=2, keepdims=True)
    share = np.where(tot > 0, S / np.maximum(tot, 1), 0.0)
    composite = np.zeros((len(elapsed), K))
    for c in range(4):
        composite = composite + (d.weights[c] / WEIGHT_SCALE) * share[:, c, :]
    na = np.searchsorted(d.agent_t, elapsed, side="left")
    cs = np.vstack([np.zeros((1, K)), np.cumsum(d.agent_s, axis=0)]) if len(d.agent_t) else np.zeros((1, K))
    agent = np.where(na[:, None] > 0, cs[na] / np.maximum(na, 1)[:, None], 0.0)
    return dict(share=share, composite=composite, voters=n, agent=agent)


def decision_features(d: Decision, elapsed: np.ndarray) -> np.ndarray:
    """Rows [S*K, 14] (float64; the model takes them as float32), snapshot-major, option-minor."""
    K = d.options
    st = snapshot_state(d, elapsed)
    comp = st["composite"]
    f = np.zeros((len(elapsed), K, N_FEATURES))
    f[:, :, 0] = elapsed[:, None]
    f[:, :, 1] = comp
    for k in range(K):
        f[:, k, 2] = comp[:, k] - np.delete(comp, k, axis=1).max(axis=1)
    f[:, :, 3:7] = st["share"].transpose(0, 2, 1)
    f[:, :, 7] = np.log(1.0 + st["voters"].astype(np.float64))[:, None]  # ln(n + 1), not log1p
    f[:, :, 8] = K
    f[:, :, 9] = st["agent"]
    f[:, :, 10:14] = d.weights / WEIGHT_SCALE
    return f.reshape(-1, N_FEATURES)


def build_rows(decisions: list[Decision], elapsed_of) -> dict:
    """Feature rows of every decision at the elapsed fractions elapsed_of(i) gives."""
    X, y, dec, opt, snap, el = [], [], [], [], [], []
    for i, d in enumerate(decisions):
        e = elapsed_of(i)
        f = decision_features(d, e)
        K = d.options
        X.append(f)
        o = np.tile(np.arange(K), len(e))
        opt.append(o)
        y.append((o == d.winner).astype(np.int64))
        dec.append(np.full(len(f), i, dtype=np.int64))
        snap.append(np.repeat(np.arange(len(e)), K))
        el.append(np.repeat(e, K))
    cat = np.concatenate
    return dict(X=cat(X), y=cat(y), decision=cat(dec), option=cat(opt), snapshot=cat(snap), elapsed=cat(el))



def read_history(path: Path) -> dict:
    """Rows of real decisions from a lake export: decision_id, [option,] f0..f13, won (0/1).

    They are added to the training rows of both versions (not to the validation split that
    tunes version 2, nor to the held-out set)."""
    names = [f for f, _ in FEATURES]
    X, y, dec = [], [], []
    ids: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ["decision_id", *names, "won"] if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing columns {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            f = [float(row[n]) for n in names]
            won = int(row["won"])
            if not all(math.isfinite(v) for v in f) or won not in (0, 1):
                raise SystemExit(f"{path}:{line}: features must be finite and won 0 or 1")
            if not (2 <= f[8] <= 5 and 0.0 <= f[0] <= 1.0):
                raise SystemExit(f"{path}:{line}: f8 (options) must be 2..5 and f0 (elapsed) in [0, 1]")
            X.append(f)
            y.append(won)
            dec.append(ids.setdefault(row["decision_id"], len(ids)))
    if not X:
        raise SystemExit(f"{path}: no rows")
    return dict(
        X=np.array(X, dtype=np.float64),
        y=np.array(y, dtype=np.int64),
        rows=len(X),
        decisions=len(ids),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        name=path.name,
    )


# ---------------------------------------------------------------------------------------------
# Metrics: per (decision, snapshot), over its options
# ---------------------------------------------------------------------------------------------
def padded(rows: dict, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group the rows of one (decision, snapshot) together: P [G, 5] (NaN past the decision's
    options), the true winner [G] and each group's first row."""
    first = np.flatnonzero(rows["option"] == 0)
    gid = np.cumsum(rows["option"] == 0) - 1
    P = np.full((len(first), 5), np.nan)
    P[gid, rows["option"]] = p
    Y = np.zeros((len(first), 5))
    Y[gid, rows["option"]] = rows["y"]
    return P, np.argmax(Y, axis=1), first


def normalise(P: np.ndarray) -> np.ndarray:
    return P / np.nansum(P, axis=1, keepdims=True)


def first_argmax(P: np.ndarray) -> np.ndarray:
    return np.argmax(np.where(np.isnan(P), -np.inf, P), axis=1)  # ties: the lowest option


def metrics(P: np.ndarray, winner: np.ndarray) -> dict:
    """P: normalised probabilities [G, 5] (NaN past the options); winner [G]."""
    G = len(P)
    rows = np.arange(G)
    pick = first_argmax(P)
    correct = pick == winner
    Y = np.zeros_like(P)
    Y[rows, winner] = 1.0
    brier = np.nansum((P - Y) ** 2, axis=1)
    p_true = np.clip(P[rows, winner], LOG_LOSS_CLIP, 1.0)
    conf = np.nanmax(P, axis=1)
    b = np.minimum((conf * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ece = 0.0
    bins = []
    for i in range(ECE_BINS):
        m = b == i
        if m.any():
            acc_i, conf_i = float(correct[m].mean()), float(conf[m].mean())
            ece += m.sum() / G * abs(acc_i - conf_i)
            bins.append(dict(bin=f"{i / ECE_BINS:.1f}-{(i + 1) / ECE_BINS:.1f}", decisions=int(m.sum()), mean_confidence=round(conf_i, 4), accuracy=round(acc_i, 4)))
    return dict(
        decisions=int(G),
        accuracy=round(float(correct.mean()), 4),
        brier=round(float(brier.mean()), 4),
        log_loss=round(float(-np.log(p_true).mean()), 4),
        ece=round(float(ece), 4),
        calibration=bins,
    )


def naive_probabilities(rows: dict) -> np.ndarray:
    """The rule "the current leader wins": 1 for the highest composite now (ties: the lowest
    option), 0 for the others; uniform while the decision has no votes."""
    C, _, first = padded(rows, rows["X"][:, 1])
    K = rows["X"][first, 8].astype(np.int64)
    no_votes = rows["X"][first, 7] == 0.0
    lead = first_argmax(C)
    P = np.where(np.isnan(C), np.nan, 0.0)
    P[np.arange(len(P)), lead] = 1.0
    uniform = np.where(np.isnan(C), np.nan, 1.0 / K[:, None])
    return np.where(no_votes[:, None], uniform, P)


def mean_log_loss(rows: dict, p: np.ndarray) -> float:
    P, winner, _ = padded(rows, p)
    P = normalise(P)
    return float(-np.log(np.clip(P[np.arange(len(P)), winner], LOG_LOSS_CLIP, 1.0)).mean())


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def fit(X: np.ndarray, y: np.ndarray, n_estimators: int, num_leaves: int, learning_rate: float):
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=n_estimators, num_leaves=num_leaves, learning_rate=learning_rate, **COMMON_PARAMS)
    model.fit(X.astype(np.float32), y)
    return model


def tune_v1(tr: dict, va: dict) -> tuple[dict, list]:
    """Version 1's learning rate with the lowest validation log loss."""
    results = []
    for lr in V1_LEARNING_RATES:
        model = fit(tr["X"], tr["y"], V1_TREES, V1_LEAVES, lr)
        p = model.predict_proba(va["X"].astype(np.float32))[:, 1]
        results.append(dict(learning_rate=lr, validation_log_loss=round(mean_log_loss(va, p), 5)))
        print(f"  v1 learning rate {lr}: validation log loss {results[-1]['validation_log_loss']:.5f}", file=sys.stderr)
    best = min(results, key=lambda r: (r["validation_log_loss"], r["learning_rate"]))
    return dict(n_estimators=V1_TREES, num_leaves=V1_LEAVES, learning_rate=best["learning_rate"]), results


def tune_v2(tr: dict, va: dict) -> tuple[dict, list]:
    """The shape of version 2 with the lowest validation log loss (normalised per decision and
    snapshot), among the candidates whose trees fit in V2_MAX_NODES nodes."""
    results = []
    for leaves in V2_LEAVES:
        counts = [n for n in V2_TREES if n * (2 * leaves - 1) <= V2_MAX_NODES]
        if not counts:
            continue
        model = fit(tr["X"], tr["y"], max(counts), leaves, V2_LEARNING_RATE)
        for n in counts:
            p = model.predict_proba(va["X"].astype(np.float32), num_iteration=n)[:, 1]
            results.append(dict(num_leaves=leaves, n_estimators=n, validation_log_loss=round(mean_log_loss(va, p), 5)))
            print(f"  v2 leaves {leaves:2d} trees {n:3d}: validation log loss {results[-1]['validation_log_loss']:.5f}", file=sys.stderr)
    best = min(results, key=lambda r: (r["validation_log_loss"], r["n_estimators"] * (2 * r["num_leaves"] - 1)))
    return dict(n_estimators=best["n_estimators"], num_leaves=best["num_leaves"], learning_rate=V2_LEARNING_RATE), results


def lightgbm_thresholds(model) -> dict:
    """float32(threshold) -> threshold (float64) over every split of the booster."""
    out: dict[float, float] = {}

    def walk(node):
        if "split_index" not in node:
            return
        th = float(node["threshold"])
        key = float(np.float32(th))
        if key in out and out[key] != th:
            raise RuntimeError(f"two thresholds round to the same float32 {key}")
        out[key] = th
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in model.booster_.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def to_onnx(model, version: int, description: str) -> bytes:
    """One TreeEnsembleClassifier node: features float32 [N,14] -> label int64 [N],
    probabilities float32 [N,2]."""
    import onnx
    import onnxmltools
    from onnx import TensorProto, helper
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = onnxmltools.convert_lightgbm(
        model, name="canopy_consensus", initial_types=[("features", FloatTensorType([None, N_FEATURES]))], zipmap=False, target_opset=15
    )
    trees = [n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier"]
    assert len(trees) == 1, [n.op_type for n in onx.graph.node]
    node = trees[0]
    attrs = {a.name: a for a in node.attribute}
    assert list(attrs["classlabels_int64s"].ints) == [0, 1]
    assert attrs["post_transform"].s == b"LOGISTIC"
    assert set(attrs["nodes_modes"].strings) <= {b"BRANCH_LEQ", b"LEAF"}
    # LightGBM sends x to the left when (double) x <= threshold (double); ONNX keeps float32
    # thresholds. Rounding each threshold down to a float32 (not to the nearest) makes the two
    # agree for every float32 input.
    original = lightgbm_thresholds(model)
    values = attrs["nodes_values"].floats
    modes = attrs["nodes_modes"].strings
    for i in range(len(values)):
        if modes[i] != b"BRANCH_LEQ":
            continue
        th = original[float(np.float32(values[i]))]
        f = np.float32(th)
        if float(f) > th:
            f = np.nextafter(f, np.float32(-np.inf))
        values[i] = float(f)
    # the converter's Identity / Cast / Mul tail and its random graph name go
    del node.output[:]
    node.output.extend(["label", "probabilities"])
    node.name = "trees"
    graph = helper.make_graph(
        [node],
        "canopy_consensus",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", N_FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
        ],
    )
    out = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)],
        ir_version=8,
        producer_name=onx.producer_name,
        producer_version=onx.producer_version,
        model_version=version,
        doc_string=(
            f"Canopy consensus prediction model, version {version} ({description}). Input 'features' float32 "
            "[N,14] = f0..f13 (see models/consensus/README.md), one row per (decision, option); outputs "
            "'label' int64 [N] and 'probabilities' float32 [N,2] (column 1 = P(this option wins at close)). "
            "Normalise one decision's column-1 values to sum 1."
        ),
    )
    for k, val in {
        "features": ",".join(name for _, name in FEATURES),
        "version": str(version),
        "positive_class": "1",
        "normalise": "per decision: p / sum(p)",
    }.items():
        p = out.metadata_props.add()
        p.key, p.value = k, val
    onnx.checker.check_model(out, full_check=True)
    return out.SerializeToString()


def ort_session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features"]
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]

    def run(X: np.ndarray) -> np.ndarray:
        label, proba = sess.run(["label", "probabilities"], {"features": X.astype(np.float32)})
        assert label.dtype == np.int64 and label.shape == (len(X),)
        assert proba.dtype == np.float32 and proba.shape == (len(X), 2)
        return proba[:, 1]

    return run


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
PREDICTORS = [("naive", "current leader wins"), ("v1", "consensus-1"), ("v2", "consensus-2")]


def table(ev: dict) -> str:
    h = ev["heldout"]
    lines = [
        f"Held-out: {h['decisions']} decisions (seed {h['seed']}); the leader at 10 % of the window was overturned by the "
        f"close in {h['early_leader_overturned']} of the {h['decisions'] - h['no_votes_at_10pct']} with votes by then.",
        "",
        "| elapsed | predictor | accuracy | Brier | log loss | ECE |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, at in h["at"].items():
        for p, label in PREDICTORS:
            m = at[p]
            lines.append(f"| {key} | {label} | {m['accuracy']:.3f} | {m['brier']:.3f} | {m['log_loss']:.3f} | {m['ece']:.3f} |")
    return "\n".join(lines)


def write_evaluation_md(ev: dict, timings: dict):
    h = ev["heldout"]
    tr = ev["training"]
    ov = h["overturned_subset"]
    overturned = "\n".join(
        f"| {key} | {ov[key]['naive']['accuracy']:.3f} | {ov[key]['v1']['accuracy']:.3f} | {ov[key]['v2']['accuracy']:.3f} |"
        for key in ov
    )
    calib = []
    for key in h["at"]:
        for b in h["at"][key]["v2"]["calibration"]:
            calib.append(f"| {key} | {b['bin']} | {b['decisions']} | {b['mean_confidence']:.3f} | {b['accuracy']:.3f} |")
    tuning_v1 = "\n".join(f"| {r['learning_rate']} | {r['validation_log_loss']:.5f} |" for r in ev["models"]["v1"]["tuning"])
    tuning = "\n".join(
        f"| {r['num_leaves']} | {r['n_estimators']} | {r['validation_log_loss']:.5f} |" for r in ev["models"]["v2"]["tuning"]
    )
    hist = ev["training"]["history"]
    tun2 = ev["models"]["v2"]["tuning"]
    v2m = ev["models"]["v2"]
    same = [r for r in tun2 if r["num_leaves"] == v2m["num_leaves"]]
    budget_note = ""
    if same and same[-1]["n_estimators"] == v2m["n_estimators"] and len(same) > 1 and same[-1]["validation_log_loss"] < same[-2]["validation_log_loss"]:
        budget_note = (
            f"The chosen shape is the largest the node budget allows with {v2m['num_leaves']} leaves, and the validation "
            "log loss was still falling there: the size budget, not overfitting, limits version 2."
        )
    hist_text = (
        f"Real decisions from `--history {hist['name']}` (sha256 {hist['sha256']}): {hist['rows']} rows of "
        f"{hist['decisions']} decisions, added to the training rows of both versions."
        if hist
        else "No `--history` file: synthetic decisions only."
    )
    v1, v2 = ev["models"]["v1"], ev["models"]["v2"]
    text = f"""# Consensus model: evaluation

Generated by `train.py`; do not edit. Probabilities are onnxruntime {ev['versions']['onnxruntime']}'s
column 1 of `consensus-1.onnx` and `consensus-2.onnx` (float32 features), normalised over each
decision's options; the baseline is the rule "the current leader wins" (1 for the highest
composite now, ties to the lowest option, 0 for the others; uniform while there are no votes).
The true winner is the option with the highest composite at close (ties to the lowest option).

- accuracy: the most probable option (ties: the lowest) is the winner;
- Brier: mean over decisions of Σ over options (p − y)²  (0 best, 2 worst);
- log loss: mean of −ln p(winner), p clipped to ≥ {LOG_LOSS_CLIP:g};
- ECE: top-label expected calibration error, {ECE_BINS} equal-width confidence bins.

## Held-out set

{table(ev)}

{h['no_votes_at_10pct']} held-out decisions had no vote at all at 10 % of the window. Seed {h['seed']}
generates the held-out decisions separately from the training seed; nothing was fitted or tuned
on them.

Accuracy on the {h['early_leader_overturned']} decisions whose leader at 10 % was overturned by the close (at
10 % the rule is wrong on every one of them, by definition):

| elapsed | current leader wins | consensus-1 | consensus-2 |
| ---: | ---: | ---: | ---: |
{overturned}

Calibration of consensus-2 (top label):

| elapsed | confidence | decisions | mean confidence | accuracy |
| ---: | --- | ---: | ---: | ---: |
{chr(10).join(calib)}

ONNX vs LightGBM on the held-out rows: max |ΔP| {v1['onnx_lightgbm_max_abs_dp']:.1e} (consensus-1),
{v2['onnx_lightgbm_max_abs_dp']:.1e} (consensus-2); labels agree on {v1['onnx_lightgbm_label_agreement'] * 100:.3f}% and
{v2['onnx_lightgbm_label_agreement'] * 100:.3f}% of the rows.

## Training set

Seed {tr['seed']}: {tr['decisions']} decisions, {TRAIN_SNAPSHOTS} snapshots each (one elapsed fraction drawn
in each twentieth of the window), {tr['rows']} rows. {hist_text}

Both versions were tuned on a validation split of the training seed (the last
{tr['validation_decisions']} of its decisions), by log loss normalised per decision and snapshot, then
refitted on all training rows. Version 1 ({V1_TREES} trees of ≤ {V1_LEAVES} leaves), its learning rate:

| learning rate | validation log loss |
| ---: | ---: |
{tuning_v1}

Version 2, its shape (learning rate {V2_LEARNING_RATE}, at most {V2_MAX_NODES} tree nodes so that the file stays
under ~1 MB):

| leaves | trees | validation log loss |
| ---: | ---: | ---: |
{tuning}

{budget_note}

| version | trees | leaves | learning rate | ONNX bytes |
| --- | ---: | ---: | ---: | ---: |
| consensus-1 | {v1['n_estimators']} | {v1['num_leaves']} | {v1['learning_rate']} | {v1['onnx_bytes']} |
| consensus-2 | {v2['n_estimators']} | {v2['num_leaves']} | {v2['learning_rate']} | {v2['onnx_bytes']} |

LightGBM {ev['versions']['lightgbm']}, objective binary, min_child_samples {COMMON_PARAMS['min_child_samples']},
reg_lambda {COMMON_PARAMS['reg_lambda']}, deterministic, row-wise, {N_THREADS} threads, seed {MODEL_SEED}.

## Timings (this run; the only part that differs between runs)

Data generation and features {timings['data_s']:.1f} s, tuning {timings['tune_s']:.1f} s, training both
versions {timings['train_s']:.1f} s, whole run {timings['total_s']:.1f} s, on {timings['machine']}.
"""
    (HERE / "EVALUATION.md").write_text(text, encoding="utf-8")


def update_readme(ev: dict):
    path = HERE / "README.md"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    begin, end = "<!-- evaluation:start -->", "<!-- evaluation:end -->"
    if begin not in text or end not in text:
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table(ev)}\n{end}{tail}", encoding="utf-8")


def fmt_f32(x) -> str:
    """The shortest decimal that reads back as the same float32."""
    return np.format_float_positional(np.float32(x), unique=True, trim="-")


PARITY_OPTIONS = [2, 3, 4, 5, 3, 4, 5, 4, 5, 5]  # one held-out decision of each size, in this order
PARITY_ELAPSED = [0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97]


def write_parity(held: list[Decision], run_v1, run_v2) -> dict:
    used: set[int] = set()
    picks = []
    for K, e in zip(PARITY_OPTIONS, PARITY_ELAPSED):
        i = next(i for i, d in enumerate(held) if d.options == K and i not in used)
        used.add(i)
        picks.append((i, e))
    TESTDATA.mkdir(parents=True, exist_ok=True)
    n = 0
    with (TESTDATA / "parity.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["decision", "option", *(f for f, _ in FEATURES), "p_v1", "p_v2"])
        for i, e in picks:
            X = decision_features(held[i], np.array([e])).astype(np.float32)
            p1, p2 = run_v1(X), run_v2(X)
            for k in range(len(X)):
                w.writerow([i, k, *(fmt_f32(x) for x in X[k]), f"{float(p1[k]):.9g}", f"{float(p2[k]):.9g}"])
                n += 1
    return dict(rows=n, decisions=[i for i, _ in picks], elapsed=PARITY_ELAPSED)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--history", type=Path, help="CSV of real decisions: decision_id, [option,] f0..f13, won")
    args = ap.parse_args()

    import lightgbm
    import onnx
    import onnxmltools
    import onnxruntime as ort

    t_start = time.perf_counter()
    print("generating synthetic decisions", file=sys.stderr)
    train_dec = gen_decisions(TRAIN_SEED, TRAIN_DECISIONS)
    snap_rng = np.random.default_rng([TRAIN_SEED, 1])
    train_elapsed = [(np.arange(TRAIN_SNAPSHOTS) + snap_rng.random(TRAIN_SNAPSHOTS)) / TRAIN_SNAPSHOTS for _ in train_dec]
    train = build_rows(train_dec, lambda i: train_elapsed[i])
    held_dec = gen_decisions(HELDOUT_SEED, HELDOUT_DECISIONS)
    held = build_rows(held_dec, lambda i: np.array(EVAL_ELAPSED))
    history = read_history(args.history) if args.history else None
    t_data = time.perf_counter()
    print(f"  training rows {len(train['y'])}, held-out rows {len(held['y'])} ({t_data - t_start:.1f} s)", file=sys.stderr)

    n_val = int(round(TRAIN_DECISIONS * VALIDATION_FRACTION))
    train_idx, val_idx = np.arange(TRAIN_DECISIONS - n_val), np.arange(TRAIN_DECISIONS - n_val, TRAIN_DECISIONS)
    sub = lambda rows, idx: {k: v[np.isin(rows["decision"], idx)] for k, v in rows.items()}  # noqa: E731
    tr, va = sub(train, train_idx), sub(train, val_idx)
    print("tuning on the validation split", file=sys.stderr)
    v1_params, tuning_v1 = tune_v1(tr, va)
    v2_params, tuning = tune_v2(tr, va)
    del tr, va
    t_tune = time.perf_counter()
    print(f"  chose v1 {v1_params}, v2 {v2_params} ({t_tune - t_data:.1f} s)", file=sys.stderr)

    X_fit, y_fit = train["X"], train["y"]
    if history:
        X_fit, y_fit = np.vstack([X_fit, history["X"]]), np.concatenate([y_fit, history["y"]])
    print("training both versions", file=sys.stderr)
    models = {"v1": (fit(X_fit, y_fit, **v1_params), v1_params), "v2": (fit(X_fit, y_fit, **v2_params), v2_params)}
    t_train = time.perf_counter()

    runs, model_info = {}, {}
    descriptions = {"v1": "small", "v2": "full"}
    for key, (model, params) in models.items():
        version = int(key[1])
        data = to_onnx(model, version, f"{descriptions[key]}: {params['n_estimators']} trees of <= {params['num_leaves']} leaves")
        assert len(data) < 1_000_000, (key, len(data))
        (HERE / f"consensus-{version}.onnx").write_bytes(data)
        run = ort_session(data)
        runs[key] = run
        p_onnx = run(held["X"])
        p_lgb = model.predict_proba(held["X"].astype(np.float32))[:, 1]
        dp = float(np.max(np.abs(p_onnx - p_lgb)))
        assert dp < 1e-5, (key, dp)
        onx = onnx.load_from_string(data)
        model_info[key] = dict(
            file=f"consensus-{version}.onnx",
            n_estimators=params["n_estimators"],
            num_leaves=params["num_leaves"],
            learning_rate=params["learning_rate"],
            onnx_bytes=len(data),
            onnx_sha256=hashlib.sha256(data).hexdigest(),
            onnx_opset={d.domain or "ai.onnx": d.version for d in onx.opset_import},
            onnx_ir_version=onx.ir_version,
            onnx_lightgbm_max_abs_dp=float(f"{dp:.1e}"),
            onnx_lightgbm_label_agreement=round(float(np.mean((p_lgb >= 0.5) == (p_onnx >= 0.5))), 6),
        )
    model_info["v1"]["tuning"] = tuning_v1
    model_info["v2"]["tuning"] = tuning

    # held-out evaluation
    at, overturned_subset = {}, {}
    probs = {"naive": normalise(naive_probabilities(held))}
    for key in ("v1", "v2"):
        probs[key] = normalise(padded(held, runs[key](held["X"]))[0])
    _, winner, first = padded(held, held["y"])
    snap = held["snapshot"][first]
    lead10 = first_argmax(padded(held, held["X"][:, 1])[0])[snap == 0]
    votes10 = held["X"][first[snap == 0], 7] > 0
    overturned = votes10 & (lead10 != winner[snap == 0])
    for s, e in enumerate(EVAL_ELAPSED):
        m = snap == s
        name = f"{round(e * 100)}%"
        at[name] = {p: metrics(probs[p][m], winner[m]) for p, _ in PREDICTORS}
        overturned_subset[name] = {p: dict(accuracy=round(float((first_argmax(probs[p][m][overturned]) == winner[m][overturned]).mean()), 4)) for p, _ in PREDICTORS}

    parity = write_parity(held_dec, runs["v1"], runs["v2"])

    ev = dict(
        features=[f"{f} {name}" for f, name in FEATURES],
        inputs={"features": f"float32 [N, {N_FEATURES}]"},
        outputs={"label": "int64 [N]", "probabilities": "float32 [N, 2] (column 1 = P(wins))"},
        baseline="current leader wins (highest composite now, ties to the lowest option; uniform with no votes)",
        metrics=dict(log_loss_clip=LOG_LOSS_CLIP, ece_bins=ECE_BINS, normalisation="per decision: p / sum(p)"),
        versions=dict(
            python=platform.python_version(),
            numpy=np.__version__,
            lightgbm=lightgbm.__version__,
            onnxmltools=onnxmltools.__version__,
            onnx=onnx.__version__,
            onnxruntime=ort.__version__,
        ),
        models=model_info,
        lightgbm_params={k: v for k, v in COMMON_PARAMS.items()},
        training=dict(
            seed=TRAIN_SEED,
            decisions=TRAIN_DECISIONS,
            snapshots_per_decision=TRAIN_SNAPSHOTS,
            rows=int(len(train["y"])),
            validation_decisions=n_val,
            swings=int(sum(d.swing for d in train_dec)),
            history=None if history is None else {k: history[k] for k in ("name", "sha256", "rows", "decisions")},
        ),
        heldout=dict(
            seed=HELDOUT_SEED,
            decisions=HELDOUT_DECISIONS,
            elapsed=list(EVAL_ELAPSED),
            rows=int(len(held["y"])),
            options={str(k): int(sum(d.options == k for d in held_dec)) for k in range(2, 6)},
            swings=int(sum(d.swing for d in held_dec)),
            no_votes_at_10pct=int((~votes10).sum()),
            early_leader_overturned=int(overturned.sum()),
            at=at,
            overturned_subset=overturned_subset,
        ),
        parity=parity,
    )
    (HERE / "evaluation.json").write_text(json.dumps(ev, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    t_end = time.perf_counter()
    timings = dict(
        data_s=t_data - t_start,
        tune_s=t_tune - t_data,
        train_s=t_train - t_tune,
        total_s=t_end - t_start,
        machine=f"{platform.machine()}, {N_THREADS} training threads",
    )
    write_evaluation_md(ev, timings)
    update_readme(ev)
    print(table(ev), file=sys.stderr)
    print(f"done in {t_end - t_start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
