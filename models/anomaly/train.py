#!/usr/bin/env python3
"""Train Canopy's sensor-window anomaly model and regenerate everything kept beside it.

Run from the repository root, in a venv made from requirements.txt:

    python3 -m venv ~/.cache/canopy/anomaly-venv
    ~/.cache/canopy/anomaly-venv/bin/pip install -r models/anomaly/requirements.txt
    ~/.cache/canopy/anomaly-venv/bin/python models/anomaly/train.py

Writes (all under models/anomaly/):
  anomaly.onnx                        the classifier: features float32 [N,5] -> label, probabilities
  evaluation.json, EVALUATION.md      held-out figures, z-score baseline, planted-fault check
  README.md                           only the evaluation table between its markers
  testdata/planted_faults.csv         3 h of readings of 5 sensors with planted faults
  testdata/planted_faults_windows.csv their windows' features, labels and the model's P(fault)

Everything is a function of the seeds below: a second run gives byte-identical files, except
the wall-clock timings in EVALUATION.md.

The window features are the ones the Rust dataflow computes (see README.md). Aggregates are
computed exactly from integer milli-units (values carry 3 decimals), as the Rust side does
from micro-units, and only then turned into float64.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TESTDATA = HERE / "testdata"

# ---------------------------------------------------------------------------------------------
# Seeds and sizes
# ---------------------------------------------------------------------------------------------
TRAIN_SEED = 20260601  # synthetic training series
HELDOUT_SEED = 90210  # held-out series: other regions, sensors and days
PLANTED_SEED = 424242  # the planted-fault test data
MODEL_SEED = 7  # the classifier

TRAIN_REGIONS = 10
TRAIN_DAYS = 6
TRAIN_START = "2026-03-02"  # a Monday
HELDOUT_REGIONS = 5
HELDOUT_DAYS = 4
HELDOUT_START = "2026-09-14"

THRESHOLD = 0.5
ZSCORE_LIMIT = 4.0  # baseline rule: |f1| > 4
N_THREADS = 2  # OpenMP threads for training: fixed so that results do not depend on the machine

SHORT_MS = 60_000
LONG_MS = 3_600_000
SCALE = 1000  # values are kept in integer milli-units (3 decimals)
KEY = 1 << 31  # composite keys: id * KEY + window index

FEATURES = ["f0", "f1", "f2", "f3", "f4"]
FAULT_TYPES = {1: "stuck", 2: "spike", 3: "drift"}
DRIFT_BANDS = [(2, 3), (3, 5), (5, 10), (10, 1000)]
SPIKE_WEIGHT = 5.0  # spike windows are rare (~0.1%): weighted up in training

# metric name, unit, pollutant?, white-noise sigma range, resolutions (units) and their odds
METRICS = [
    ("pm25", "µg/m³", True, (0.8, 2.5), [(0.001, 0.5), (0.1, 0.3), (1.0, 0.2)]),
    ("no2", "µg/m³", True, (1.0, 3.0), [(0.001, 0.6), (0.1, 0.25), (1.0, 0.15)]),
    ("o3", "µg/m³", True, (1.5, 4.0), [(0.001, 0.6), (0.1, 0.25), (1.0, 0.15)]),
    ("temperature", "°C", False, (0.05, 0.3), [(0.001, 0.4), (0.01, 0.3), (0.1, 0.3)]),
]


def day_ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()) * 1000


# ---------------------------------------------------------------------------------------------
# Window aggregates and features: exactly what the Rust dataflow computes
# ---------------------------------------------------------------------------------------------
@dataclass
class Agg:
    keys: np.ndarray  # sorted unique composite keys
    n: np.ndarray  # int64
    s: np.ndarray  # int64, sum of milli-units
    ss: np.ndarray  # int64, sum of squared milli-units
    mn: np.ndarray  # int64
    mx: np.ndarray  # int64


def aggregate(keys: np.ndarray, v: np.ndarray) -> Agg:
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    x = v[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    n = np.diff(np.r_[starts, len(k)]).astype(np.int64)
    return Agg(
        keys=k[starts],
        n=n,
        s=np.add.reduceat(x, starts),
        ss=np.add.reduceat(x * x, starts),
        mn=np.minimum.reduceat(x, starts),
        mx=np.maximum.reduceat(x, starts),
    )


def mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean and population std, in units, from exact integer sums of milli-units.

    var = max(0, sumsq/n - mean^2) evaluated exactly as (n*sumsq - sum^2) / n^2 with Python
    integers (so a constant series has var exactly 0 and leave-one-out differences do not
    cancel), then rounded once to float64. n must be >= 1 everywhere.
    """
    n_o = n.astype(object)
    num = n_o * ss.astype(object) - s.astype(object) * s.astype(object)
    var_milli2 = np.array([max(0, a) / b for a, b in zip(num, n_o * n_o)], dtype=np.float64)
    mean = (s.astype(np.float64) / n.astype(np.float64)) / SCALE
    std = np.sqrt(var_milli2) / SCALE
    return mean, std


def floor_std(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(std, 0.01 * np.abs(mean)), 1e-3)


def lookup(agg: Agg, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each key in agg (clipped) and whether it is there."""
    idx = np.searchsorted(agg.keys, keys)
    idx_c = np.minimum(idx, len(agg.keys) - 1)
    return idx_c, agg.keys[idx_c] == keys


RECENT_WINDOWS = 10  # f2 compares the last 10 minutes' spread with the previous hour's


def window_features(sensor: np.ndarray, group: np.ndarray, t: np.ndarray, v: np.ndarray):
    """Features of every (sensor, short window) that has a baseline.

    sensor: id of the sensor-metric series of each reading; group: id of its region-metric;
    t: int64 ms; v: int64 milli-units. Returns (sensor id, window index, features [N,5] float64,
    index of each reading's window row or -1).
    """
    ws = t // SHORT_MS
    wl = t // LONG_MS
    W = aggregate(sensor * KEY + ws, v)  # the sensor's short windows
    S = aggregate(sensor * KEY + wl, v)  # the sensor's long windows
    R = aggregate(group * KEY + ws, v)  # the region's short windows
    RL = aggregate(group * KEY + wl, v)  # the region's long windows

    w_sensor = W.keys // KEY
    w_idx = W.keys % KEY
    # every reading of a sensor-metric series has the same group: take it from any reading
    first = np.unique(sensor, return_index=True)
    w_group = group[first[1][np.searchsorted(first[0], w_sensor)]]
    L = (w_idx * SHORT_MS) // LONG_MS

    bi, b_ok = lookup(S, w_sensor * KEY + (L - 1))
    b_ok &= S.n[bi] >= 2
    keep = np.flatnonzero(b_ok)
    bi = bi[keep]
    w_sensor, w_idx, w_group, L = w_sensor[keep], w_idx[keep], w_group[keep], L[keep]
    wn, wsum, wss = W.n[keep], W.s[keep], W.ss[keep]
    wmn, wmx = W.mn[keep], W.mx[keep]

    w_mean, _ = mean_std(wn, wsum, wss)
    b_mean, b_std = mean_std(S.n[bi], S.s[bi], S.ss[bi])
    sB = floor_std(b_std, b_mean)

    # C: the sensor's last RECENT_WINDOWS short windows through w (its recent spread; a
    # detector must not look ahead). Window sums over W, which is sorted by (sensor,
    # window), from running sums; int64 wrap-around cancels in the differences.
    rows = np.arange(len(W.keys))
    first_recent = np.searchsorted(W.keys, W.keys - (RECENT_WINDOWS - 1))
    def recent(x: np.ndarray) -> np.ndarray:
        run = np.cumsum(x)
        before = np.where(first_recent > 0, run[first_recent - 1], 0)
        return (run - before)[rows]
    c_n, c_s, c_ss = recent(W.n)[keep], recent(W.s)[keep], recent(W.ss)[keep]
    _, c_std = mean_std(c_n, c_s, c_ss)

    ri, r_ok = lookup(R, w_group * KEY + w_idx)
    assert r_ok.all()
    r_mean, _ = mean_std(R.n[ri], R.s[ri], R.ss[ri])
    pn = R.n[ri] - wn
    has_p = pn >= 1
    p_mean, p_std = mean_std(
        np.where(has_p, pn, 1), np.where(has_p, R.s[ri] - wsum, 0), np.where(has_p, R.ss[ri] - wss, 0)
    )

    rbi, rb_ok = lookup(RL, w_group * KEY + (L - 1))
    rb_ok &= RL.n[rbi] >= 2
    rb_mean, rb_std = mean_std(RL.n[rbi], RL.s[rbi], RL.ss[rbi])

    f = np.empty((len(keep), 5), dtype=np.float64)
    f[:, 0] = (w_mean - b_mean) / sB
    f[:, 1] = np.maximum(np.abs(wmx / SCALE - b_mean), np.abs(wmn / SCALE - b_mean)) / sB
    f[:, 2] = np.log((c_std + 1e-3) / (sB + 1e-3))
    f[:, 3] = np.where(has_p, (w_mean - p_mean) / floor_std(p_std, p_mean), 0.0)
    f[:, 4] = np.where(rb_ok, (r_mean - rb_mean) / floor_std(rb_std, rb_mean), 0.0)

    # which feature row each reading falls in (-1: its window has no features)
    row_of_window = np.full(len(W.keys), -1, dtype=np.int64)
    row_of_window[keep] = np.arange(len(keep))
    reading_window = np.searchsorted(W.keys, sensor * KEY + ws)
    return w_sensor, w_idx, f, row_of_window[reading_window]


def window_max(rows: np.ndarray, n_rows: int, x: np.ndarray) -> np.ndarray:
    """Per feature row, the largest x of its readings (x >= 0; 0 for no reading)."""
    m = rows >= 0
    out = np.zeros(n_rows, dtype=x.dtype)
    np.maximum.at(out, rows[m], x[m])
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic air-quality series
# ---------------------------------------------------------------------------------------------
def bump(d_hours: np.ndarray, width: float) -> np.ndarray:
    d = (d_hours + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def smooth_process(rng, grid_s: np.ndarray, step_s: float, phi: float) -> np.ndarray:
    """A stationary N(0,1) AR(1) process on a coarse grid, linearly interpolated."""
    n = int(math.ceil((grid_s[-1] - grid_s[0]) / step_s)) + 2
    x = np.empty(n)
    x[0] = rng.normal()
    e = rng.normal(size=n) * math.sqrt(1 - phi * phi)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    coarse = grid_s[0] + np.arange(n) * step_s
    return np.interp(grid_s, coarse, x)


def ar1(rng, n: int, phi: float) -> np.ndarray:
    """A stationary N(0,1) AR(1) sequence."""
    from scipy.signal import lfilter

    e = rng.normal(size=n) * math.sqrt(1 - phi * phi)
    e[0] = rng.normal()
    return lfilter([1.0], [1.0, -phi], e)


def gen_region(rng, name: str, sensor_prefix: str, start_ms: int, days: int):
    """One region's readings: a list of per sensor-metric dicts of arrays."""
    period_s = days * 86400
    grid = np.arange(-3600.0, period_s + 3600.0, 10.0)  # seconds from start_ms
    utc_offset = rng.uniform(-1.0, 3.0)
    hour = ((grid / 3600.0 + utc_offset) % 24.0 + 24.0) % 24.0
    weekday = ((grid // 86400).astype(int) + 0) % 7  # start is a Monday
    weekend = np.where(weekday >= 5, 0.6, 1.0)

    w_a = smooth_process(rng, grid, 900.0, 0.985)  # stagnation / ventilation
    w_b = smooth_process(rng, grid, 900.0, 0.985)  # air-mass temperature
    base = {
        "pm25": rng.uniform(8, 28)
        * (0.75 + weekend * (rng.uniform(0.3, 0.7) * bump(hour - 8.0, 1.3) + rng.uniform(0.3, 0.6) * bump(hour - 18.5, 1.8)))
        * np.exp(0.35 * w_a),
        "no2": rng.uniform(12, 35)
        * (0.6 + weekend * (rng.uniform(0.6, 1.1) * bump(hour - 8.0, 1.2) + rng.uniform(0.5, 0.9) * bump(hour - 18.0, 1.6)))
        * np.exp(0.3 * w_a),
        "o3": rng.uniform(35, 70) * (0.55 + rng.uniform(0.6, 1.0) * bump(hour - 15.0, 3.0)) * np.exp(-0.15 * w_a + 0.1 * w_b),
        "temperature": rng.uniform(4, 22) + rng.uniform(3, 7) * np.cos(2 * np.pi * (hour - 15.0) / 24.0) + 2.5 * w_b,
    }
    level = {m: float(np.mean(base[m])) for m in base}

    # region-wide events: not faults
    events = []
    for _ in range(rng.poisson(1.3 * days)):
        kind = rng.choice(["plume", "plume", "plume", "washout", "front"])
        start = rng.uniform(0, period_s)
        dur = rng.uniform(30, 120) * 60
        if kind == "plume":
            amp = {"pm25": rng.uniform(8, 70), "no2": rng.uniform(0, 45), "o3": -rng.uniform(0, 10), "temperature": 0.0}
        elif kind == "washout":
            amp = {"pm25": -0.5 * level["pm25"], "no2": -0.3 * level["no2"], "o3": 0.0, "temperature": -rng.uniform(0.5, 2)}
        else:
            amp = {"pm25": 0.0, "no2": 0.0, "o3": -rng.uniform(0, 10), "temperature": -rng.uniform(3, 7)}
        events.append((kind, start, dur, amp))

    n_sensors = int(rng.integers(3, 9))
    series = []
    for si in range(n_sensors):
        sensor_id = f"{sensor_prefix}-{si + 1}"
        interval_ms = int(rng.integers(10, 61)) * 1000
        phase = int(rng.integers(0, interval_ms))
        t = np.arange(phase, period_s * 1000, interval_ms, dtype=np.int64)
        t = t + rng.integers(-200, 201, size=len(t))
        keep = (t >= 0) & (t < period_s * 1000) & (rng.random(len(t)) > 0.015)
        for _ in range(rng.binomial(days, 0.25)):  # outages
            o0 = rng.uniform(0, period_s * 1000)
            keep &= ~((t >= o0) & (t < o0 + rng.uniform(5, 120) * 60_000))
        t = np.sort(t[keep])
        ts = t / 1000.0
        for mi, (metric, unit, pollutant, sig_range, resolutions) in enumerate(METRICS):
            if pollutant:  # calibration: a gain error and a small offset
                gain, offset = rng.normal(1.0, 0.06), rng.normal(0.0, 0.03 * level[metric] + 0.1)
            else:  # thermometers: an offset
                gain, offset = rng.normal(1.0, 0.01), rng.normal(0.0, 0.3)
            lag = rng.uniform(0, 600)
            sigma = rng.uniform(*sig_range) * (1.0 if not pollutant else max(0.6, level[metric] / 25.0) ** 0.5)
            x = gain * np.interp(ts - lag, grid, base[metric]) + offset
            event_on = np.zeros(len(t), dtype=bool)
            for kind, start, dur, amp in events:
                a = amp[metric]
                if a == 0.0:
                    continue
                u = (ts - start - rng.uniform(0, 480)) / dur
                # plumes reach sensors unevenly (near a source or not); a front hardly differs
                factor = rng.uniform(0.85, 1.15) if kind == "front" else rng.uniform(0.7, 1.3)
                if kind == "front":
                    shape = 0.5 * (1 + np.tanh((u - 0.5) * 4))
                    event_on |= (u > 0) & (u < 1.5)
                else:
                    shape = np.where((u > 0) & (u < 1), np.sin(np.pi * np.clip(u, 0, 1)) ** 2, 0.0)
                    event_on |= (u > 0) & (u < 1)
                x = x + factor * a * shape
            x = x + 0.35 * sigma * ar1(rng, len(t), math.exp(-interval_ms / 1000 / 600.0)) + sigma * rng.normal(size=len(t))

            # fault sizes are in noise sigmas, but a thermometer's noise (0.05-0.3 °C) is far below
            # what its faults look like (a failing radiation shield drifts by degrees)
            fs = sigma if pollutant else max(sigma, 0.2)
            code = np.zeros(len(t), dtype=np.int64)
            drift_sigmas = np.zeros(len(t))  # |drift| in noise sigmas
            # drift: a linear ramp to k sigma, an optional plateau, then recalibrated
            for _ in range(rng.poisson(0.12 * days)):
                t0 = rng.uniform(-2 * 3600, period_s)
                ramp = rng.uniform(1.5, 10) * 3600
                plateau = rng.uniform(0, 4) * 3600 if rng.random() < 0.5 else 0.0
                final = rng.choice([-1.0, 1.0], p=[0.3, 0.7]) * rng.uniform(5, 20) * fs
                u = (ts - t0) / ramp
                on = (u >= 0) & (ts < t0 + ramp + plateau)
                off = np.where(on, final * np.clip(u, 0, 1), 0.0)
                x = x + off
                code[np.abs(off) > 2 * sigma] = 3
                drift_sigmas = np.maximum(drift_sigmas, np.abs(off) / sigma)
            # spikes: a few isolated readings >= 8 sigma
            for _ in range(rng.poisson(0.4 * days)):
                t0 = rng.uniform(0, period_s)
                idx = np.flatnonzero((ts >= t0) & (ts < t0 + rng.uniform(0.5, 3) * 3600))
                if len(idx) == 0:
                    continue
                pick = rng.choice(idx, size=min(len(idx), int(rng.integers(1, 7))), replace=False)
                up = rng.random(len(pick)) < (0.85 if pollutant else 0.5)
                x[pick] += np.where(up, 1.0, -1.0) * rng.uniform(8, 30, size=len(pick)) * fs
                code[pick] = 2
            if pollutant:
                x = np.maximum(x, 0.0)
            res_units, odds = zip(*resolutions)
            res = int(round(res_units[rng.choice(len(res_units), p=np.array(odds) / sum(odds))] * SCALE))
            v = (np.round(x * SCALE / res) * res).astype(np.int64)
            # stuck: repeats its last value for 1-6 h
            for _ in range(rng.poisson(0.12 * days)):
                t0 = rng.uniform(-1800, period_s)
                idx = np.flatnonzero((ts >= t0) & (ts < t0 + rng.uniform(1, 6) * 3600))
                if len(idx) == 0:
                    continue
                v[idx] = v[max(idx[0] - 1, 0)]
                code[idx] = 1
            series.append(
                dict(
                    region=name,
                    sensor_id=sensor_id,
                    metric=metric,
                    metric_idx=mi,
                    t=t + start_ms,
                    v=v,
                    code=code,
                    event=event_on,
                    drift_sigmas=drift_sigmas,
                )
            )
    return series


def gen_dataset(seed: int, n_regions: int, days: int, start: str, region_prefix: str):
    rng = np.random.default_rng(seed)
    series = []
    for r in range(n_regions):
        name = f"{region_prefix}{r:02d}"
        series += gen_region(rng, name, f"{name}-s", day_ms(start), days)
    return series


def dataset_windows(series):
    """Features and labels of every scored window of a list of series."""
    region_metric = {}
    sensor, group, t, v, code, event, drift = [], [], [], [], [], [], []
    for i, s in enumerate(series):
        g = region_metric.setdefault((s["region"], s["metric"]), len(region_metric))
        sensor.append(np.full(len(s["t"]), i, dtype=np.int64))
        group.append(np.full(len(s["t"]), g, dtype=np.int64))
        t.append(s["t"])
        v.append(s["v"])
        code.append(s["code"])
        event.append(s["event"])
        drift.append(s["drift_sigmas"])
    sensor, group, t, v, code, event, drift = map(np.concatenate, (sensor, group, t, v, code, event, drift))
    w_sensor, _, f, rows = window_features(sensor, group, t, v)
    # a window's fault type: the highest code among its readings (drift > spike > stuck)
    kind = window_max(rows, len(f), code)
    ev = window_max(rows, len(f), event)
    drift_sigmas = window_max(rows, len(f), drift)
    metric = np.array([s["metric_idx"] for s in series], dtype=np.int64)[w_sensor]
    return dict(features=f, kind=kind, event=ev, drift_sigmas=drift_sigmas, metric=metric, readings=len(t), series=len(series))


# ---------------------------------------------------------------------------------------------
# Planted-fault test data
# ---------------------------------------------------------------------------------------------
PLANTED_START = "2026-06-01T00:00:00Z"
PLANTED_SENSORS = [f"tn-{i}" for i in range(1, 6)]
PLANTED_SIGMA = 1.5  # µg/m³, white noise of every sensor
PLANTED_SPIKES = ["01:20:30", "01:50:10", "02:30:40"]  # tn-4, at >= 10 sigma
PLANTED_DRIFT_END = 15.0  # µg/m³ of drift reached by 03:00 (10 sigma)


def fmt_value(milli: int) -> str:
    sign = "-" if milli < 0 else ""
    q, r = divmod(abs(int(milli)), SCALE)
    return f"{sign}{q}.{r:03d}"


def fmt_ts(ms: int) -> str:
    sec, milli = divmod(int(ms), 1000)
    return datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{milli:03d}Z"


def parse_ts(s: str) -> int:
    assert s.endswith("Z")
    head, frac = s[:-1].split(".")
    sec = int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return sec * 1000 + int(frac)


def write_planted_readings(path: Path):
    rng = np.random.default_rng(PLANTED_SEED)
    t0 = parse_ts("2026-06-01T00:00:00.000Z")
    t = t0 + np.arange(0, 3 * 3600, 10, dtype=np.int64) * 1000
    hours = (t - t0) / 3_600_000.0
    # a night-time pm25 level easing from ~17 to ~13 with a slow shared wobble
    regional = 17.0 - 1.3 * hours + 0.6 * np.sin(2 * np.pi * hours / 1.7)
    sig = PLANTED_SIGMA
    rows = {}
    truth = {}
    for i, sensor in enumerate(PLANTED_SENSORS):
        gain = 1.0 + 0.03 * (i - 2)
        x = gain * regional + sig * rng.normal(size=len(t))
        code = np.zeros(len(t), dtype=np.int64)
        in_fault = t >= t0 + LONG_MS
        if sensor == "tn-4":
            for hms in PLANTED_SPIKES:
                k = int(np.flatnonzero(t == parse_ts(f"2026-06-01T{hms}.000Z"))[0])
                x[k] += 12 * sig
                code[k] = 2
        if sensor == "tn-5":
            off = np.where(in_fault, PLANTED_DRIFT_END * (t - t0 - LONG_MS) / (2 * LONG_MS), 0.0)
            x += off
            code[off > 2 * sig] = 3
        v = np.round(x * SCALE).astype(np.int64)
        if sensor == "tn-3":
            stuck = np.flatnonzero(in_fault)
            v[stuck] = v[stuck[0] - 1]
            code[stuck] = 1
        rows[sensor] = v
        truth[sensor] = code
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sensor_id", "region", "metric", "unit", "value", "timestamp", "quality"])
        for k in range(len(t)):
            for sensor in PLANTED_SENSORS:
                w.writerow([sensor, "test-north", "pm25", "µg/m³", fmt_value(rows[sensor][k]), fmt_ts(t[k]), "ok"])
    return t, truth


def read_planted(path: Path):
    """Readings as printed: (sensor index, t ms, milli-units), parsed from the CSV's text."""
    sensor, t, v = [], [], []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            sensor.append(PLANTED_SENSORS.index(row["sensor_id"]))
            t.append(parse_ts(row["timestamp"]))
            v.append(int(Decimal(row["value"]) * SCALE))
    return np.array(sensor, dtype=np.int64), np.array(t, dtype=np.int64), np.array(v, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def f1(p: float, r: float) -> float:
    return round(2 * p * r / (p + r), 4) if p + r else 0.0


def scores(pred: np.ndarray, d: dict) -> dict:
    kind, event, metric = d["kind"], d["event"], d["metric"]
    pos = kind > 0
    tp, fp, fn = int((pred & pos).sum()), int((pred & ~pos).sum()), int((~pred & pos).sum())
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    out = dict(
        overall=dict(tp=tp, fp=fp, fn=fn, tn=int((~pred & ~pos).sum()), precision=p, recall=r, f1=f1(p, r)),
        per_fault={},
        false_positive_rate=ratio(fp, int((~pos).sum())),
        false_positive_rate_in_regional_events=ratio(int((pred & ~pos & event).sum()), int((~pos & event).sum())),
        per_metric={},
    )
    # per fault type: recall among that type's windows; precision against every false alarm
    for code, name in FAULT_TYPES.items():
        k = kind == code
        tpk = int((pred & k).sum())
        pk, rk = ratio(tpk, tpk + fp), ratio(tpk, int(k.sum()))
        out["per_fault"][name] = dict(windows=int(k.sum()), tp=tpk, precision=pk, recall=rk, f1=f1(pk, rk))
    if "drift_sigmas" in d:  # drift recall by how far the drift has gone, in noise sigmas
        out["drift_recall_by_size"] = {}
        for lo, hi in DRIFT_BANDS:
            k = (kind == 3) & (d["drift_sigmas"] > lo) & (d["drift_sigmas"] <= hi)
            out["drift_recall_by_size"][f"{lo:g}-{hi:g} sigma"] = dict(windows=int(k.sum()), recall=ratio(int((pred & k).sum()), int(k.sum())))
    for mi, (name, *_rest) in enumerate(METRICS):
        m = metric == mi
        tpm, fpm, fnm = int((pred & pos & m).sum()), int((pred & ~pos & m).sum()), int((~pred & pos & m).sum())
        pm, rm = ratio(tpm, tpm + fpm), ratio(tpm, tpm + fnm)
        out["per_metric"][name] = dict(precision=pm, recall=rm, f1=f1(pm, rm))
    return out


def counts(d) -> dict:
    kind = d["kind"]
    return dict(
        series=d["series"],
        readings=int(d["readings"]),
        windows=int(len(kind)),
        fault_windows=int((kind > 0).sum()),
        **{f"{name}_windows": int((kind == code).sum()) for code, name in FAULT_TYPES.items()},
        regional_event_windows=int((d["event"] & (kind == 0)).sum()),
    )


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def table(ev: dict) -> str:
    m, z = ev["heldout"]["model"], ev["heldout"]["zscore_rule"]
    lines = [
        "| held-out windows | model P | model R | model F1 | z-score P | z-score R | z-score F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label, a, b):
        return f"| {label} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |"

    lines.append(row(f"all faults ({ev['heldout']['counts']['fault_windows']})", m["overall"], z["overall"]))
    for name in FAULT_TYPES.values():
        lines.append(row(f"{name} ({m['per_fault'][name]['windows']})", m["per_fault"][name], z["per_fault"][name]))
    lines.append(
        f"| false-positive rate, all healthy windows | {m['false_positive_rate']:.4f} | | | {z['false_positive_rate']:.4f} | | |"
    )
    lines.append(
        f"| false-positive rate, healthy windows in regional plumes/fronts | {m['false_positive_rate_in_regional_events']:.4f} | | | "
        f"{z['false_positive_rate_in_regional_events']:.4f} | | |"
    )
    return "\n".join(lines)


def planted_table(pl: dict) -> str:
    lines = ["| sensor | planted | windows | fault windows | flagged by model | flagged by z-score rule |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for s, d in pl["per_sensor"].items():
        lines.append(
            f"| {s} | {d['planted']} | {d['windows']} | {d['fault_windows']} | {d['model_flagged']} | {d['zscore_flagged']} |"
        )
    return "\n".join(lines)


def write_evaluation_md(ev: dict, timings: dict):
    h = ev["heldout"]
    tr = ev["training"]
    m = h["model"]
    z = h["zscore_rule"]
    pl = ev["planted"]
    per_metric = "\n".join(
        f"| {name} | {m['per_metric'][name]['precision']:.3f} | {m['per_metric'][name]['recall']:.3f} | {m['per_metric'][name]['f1']:.3f} "
        f"| {z['per_metric'][name]['precision']:.3f} | {z['per_metric'][name]['recall']:.3f} | {z['per_metric'][name]['f1']:.3f} |"
        for name in m["per_metric"]
    )
    by_size = "\n".join(
        f"| {band} | {d['windows']} | {d['recall']:.3f} | {z['drift_recall_by_size'][band]['recall']:.3f} |"
        for band, d in m["drift_recall_by_size"].items()
    )
    text = f"""# Anomaly model: evaluation

Generated by `train.py`; do not edit. Figures are at threshold {THRESHOLD} on P(fault) as
onnxruntime {ev['versions']['onnxruntime']} computes it from `anomaly.onnx` (float32 features),
against the baseline rule `|f1| > {ZSCORE_LIMIT:g}` (the window's most extreme reading more than
{ZSCORE_LIMIT:g} baseline standard deviations from the previous hour's mean).

Per fault type, recall is over that type's windows and precision counts that type's hits
against every false alarm (predictions carry no fault type).

## Held-out set

Seed {h['seed']}: {HELDOUT_REGIONS} regions, {HELDOUT_DAYS} days from {HELDOUT_START}, none of
the training regions, sensors or days. {h['counts']['series']} sensor-metric series,
{h['counts']['readings']} readings, {h['counts']['windows']} scored windows of which
{h['counts']['fault_windows']} faulty ({h['counts']['stuck_windows']} stuck,
{h['counts']['spike_windows']} spike, {h['counts']['drift_windows']} drift) and
{h['counts']['regional_event_windows']} healthy windows inside region-wide plumes, washouts or
fronts.

{table(ev)}

By metric:

| metric | model P | model R | model F1 | z-score P | z-score R | z-score F1 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{per_metric}

Drift recall by how far the drift had gone in the window (in the sensor's noise σ; labels
start past 2σ, where a drift is hard to tell from a calibration offset):

| drift | windows | model recall | z-score recall |
| --- | ---: | ---: | ---: |
{by_size}

Model vs scikit-learn on the held-out set: the ONNX model and the scikit-learn model agree on
{h['onnx_sklearn_label_agreement'] * 100:.3f}% of the labels (max |ΔP| {h['onnx_sklearn_max_abs_dp']:.2e}).

## Training set

Seed {tr['seed']}: {TRAIN_REGIONS} regions, {TRAIN_DAYS} days from {TRAIN_START}.
{tr['counts']['series']} series, {tr['counts']['readings']} readings, {tr['counts']['windows']}
windows of which {tr['counts']['fault_windows']} faulty ({tr['counts']['stuck_windows']} stuck,
{tr['counts']['spike_windows']} spike, {tr['counts']['drift_windows']} drift). Training-set F1 of
the model: {tr['model_f1']:.3f}. Classifier: {ev['model']['classifier']}, model seed
{ev['model']['seed']}, {ev['model']['trees']} trees, {ev['model']['onnx_bytes']} bytes of ONNX.

## Planted faults (testdata/)

`testdata/planted_faults.csv`: region test-north, 5 pm25 sensors every 10 s for 3 h from
{PLANTED_START}; seed {PLANTED_SEED}. Hour 0 is normal (no windows scored: no baseline). From
01:00: tn-3 stuck, tn-4 spikes at {', '.join(PLANTED_SPIKES)} (+12σ, σ = {PLANTED_SIGMA} µg/m³),
tn-5 drifting linearly to +{PLANTED_DRIFT_END:g} µg/m³ at 03:00 (fault from the first reading
past 2σ); tn-1, tn-2 healthy.

{planted_table(pl)}

Fault windows flagged by the model: stuck {pl['model']['per_fault']['stuck']['tp']}/{pl['model']['per_fault']['stuck']['windows']},
spike {pl['model']['per_fault']['spike']['tp']}/{pl['model']['per_fault']['spike']['windows']},
drift {pl['model']['per_fault']['drift']['tp']}/{pl['model']['per_fault']['drift']['windows']};
healthy windows flagged: {pl['model']['overall']['fp']}/{pl['counts']['healthy_windows']}
(z-score rule: stuck {pl['zscore_rule']['per_fault']['stuck']['tp']}, spike {pl['zscore_rule']['per_fault']['spike']['tp']},
drift {pl['zscore_rule']['per_fault']['drift']['tp']}, healthy flagged {pl['zscore_rule']['overall']['fp']}).

## Timings (this run; the only part that differs between runs)

Data generation and features {timings['data_s']:.1f} s, training {timings['train_s']:.1f} s,
whole run {timings['total_s']:.1f} s, on {timings['machine']}.
"""
    (HERE / "EVALUATION.md").write_text(text, encoding="utf-8")


def update_readme(ev: dict):
    path = HERE / "README.md"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    begin, end = "<!-- evaluation:begin -->", "<!-- evaluation:end -->"
    if begin not in text or end not in text:
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table(ev)}\n{end}{tail}", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def main() -> int:
    import onnx
    import onnxruntime as ort
    import sklearn
    import skl2onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    t_start = time.perf_counter()
    print("generating synthetic series", file=sys.stderr)
    train = dataset_windows(gen_dataset(TRAIN_SEED, TRAIN_REGIONS, TRAIN_DAYS, TRAIN_START, "r"))
    held = dataset_windows(gen_dataset(HELDOUT_SEED, HELDOUT_REGIONS, HELDOUT_DAYS, HELDOUT_START, "h"))
    t_data = time.perf_counter()
    print(f"  training windows {len(train['kind'])}, held-out {len(held['kind'])} ({t_data - t_start:.1f} s)", file=sys.stderr)

    X = train["features"].astype(np.float32)
    y = (train["kind"] > 0).astype(np.int64)
    model = HistGradientBoostingClassifier(
        max_iter=200,
        learning_rate=0.1,
        max_leaf_nodes=15,
        max_depth=6,
        min_samples_leaf=40,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=MODEL_SEED,
    )
    print("training", file=sys.stderr)
    with threadpool_limits(limits=N_THREADS, user_api="openmp"):
        model.fit(X, y, sample_weight=np.where(train["kind"] == 2, SPIKE_WEIGHT, 1.0))
    t_train = time.perf_counter()
    print(f"  {t_train - t_data:.1f} s", file=sys.stderr)

    target_opset = {"": 17, "ai.onnx.ml": 3}
    onx = convert_sklearn(
        model,
        "canopy_anomaly",
        initial_types=[("features", FloatTensorType([None, 5]))],
        options={id(model): {"zipmap": False}},
        target_opset=target_opset,
        final_types=None,
    )
    # one opset_import entry per domain (skl2onnx lists the default domain twice here)
    versions = {}
    for o in onx.opset_import:
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    del onx.opset_import[:]
    for domain, version in sorted(versions.items()):
        onx.opset_import.add(domain=domain, version=version)
    onx.doc_string = (
        "Canopy sensor-window anomaly classifier. Input 'features' float32 [N,5] = f0..f4 "
        "(see models/anomaly/README.md); outputs 'label' int64 [N] (1 = fault at P >= 0.5) and "
        "'probabilities' float32 [N,2] (column 1 = P(fault))."
    )
    for k, val in {"features": ",".join(FEATURES), "threshold": str(THRESHOLD), "positive_class": "1"}.items():
        p = onx.metadata_props.add()
        p.key, p.value = k, val
    onnx.checker.check_model(onx)
    out_names = [o.name for o in onx.graph.output]
    assert out_names == ["label", "probabilities"], out_names
    model_bytes = onx.SerializeToString()
    assert len(model_bytes) < 2 * 1024 * 1024, len(model_bytes)
    (HERE / "anomaly.onnx").write_bytes(model_bytes)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])

    def p_fault(f: np.ndarray) -> np.ndarray:
        label, proba = sess.run(["label", "probabilities"], {"features": f.astype(np.float32)})
        assert label.dtype == np.int64 and proba.dtype == np.float32 and proba.shape == (len(f), 2)
        return proba[:, 1]

    p_held = p_fault(held["features"])
    p_sk = model.predict_proba(held["features"].astype(np.float32))[:, 1]
    pred_model = p_held >= THRESHOLD
    pred_z = np.abs(held["features"][:, 1]) > ZSCORE_LIMIT
    p_train = p_fault(train["features"])
    train_scores = scores(p_train >= THRESHOLD, train)

    # planted-fault test data
    TESTDATA.mkdir(parents=True, exist_ok=True)
    readings_csv = TESTDATA / "planted_faults.csv"
    t_planted, truth = write_planted_readings(readings_csv)
    ps, pt, pv = read_planted(readings_csv)
    code = np.zeros(len(ps), dtype=np.int64)
    for i, sensor in enumerate(PLANTED_SENSORS):
        m = ps == i
        code[m] = truth[sensor][np.searchsorted(t_planted, pt[m])]
    w_sensor, w_idx, pf, rows = window_features(ps, np.zeros_like(ps), pt, pv)
    p_kind = window_max(rows, len(pf), code)
    p_pl = p_fault(pf)
    order = np.lexsort((w_idx, w_sensor))
    with (TESTDATA / "planted_faults_windows.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sensor_id", "window_start_ms", *FEATURES, "fault", "p_fault"])
        for k in order:
            w.writerow(
                [
                    PLANTED_SENSORS[w_sensor[k]],
                    int(w_idx[k]) * SHORT_MS,
                    *(repr(float(x)) for x in pf[k]),
                    int(p_kind[k] > 0),
                    np.format_float_positional(np.float32(p_pl[k]), unique=True, trim="0"),
                ]
            )
    planted_desc = {"tn-1": "healthy", "tn-2": "healthy", "tn-3": "stuck 01:00-03:00", "tn-4": "3 spikes", "tn-5": "drift from 01:00"}
    pz = np.abs(pf[:, 1]) > ZSCORE_LIMIT
    pd = dict(kind=p_kind, event=np.zeros(len(pf), bool), metric=np.zeros(len(pf), int))
    planted = dict(
        seed=PLANTED_SEED,
        counts=dict(readings=int(len(ps)), windows=int(len(pf)), fault_windows=int((p_kind > 0).sum()), healthy_windows=int((p_kind == 0).sum())),
        model=scores(p_pl >= THRESHOLD, pd),
        zscore_rule=scores(pz, pd),
        per_sensor={
            s: dict(
                planted=planted_desc[s],
                windows=int((w_sensor == i).sum()),
                fault_windows=int(((w_sensor == i) & (p_kind > 0)).sum()),
                model_flagged=int(((w_sensor == i) & (p_pl >= THRESHOLD)).sum()),
                zscore_flagged=int(((w_sensor == i) & pz).sum()),
            )
            for i, s in enumerate(PLANTED_SENSORS)
        },
    )
    for d in (planted["model"], planted["zscore_rule"]):
        d.pop("per_metric")
        d.pop("false_positive_rate_in_regional_events")

    ev = dict(
        threshold=THRESHOLD,
        zscore_rule=f"|f1| > {ZSCORE_LIMIT:g}",
        features=FEATURES,
        versions=dict(
            python=platform.python_version(),
            numpy=np.__version__,
            scikit_learn=sklearn.__version__,
            skl2onnx=skl2onnx.__version__,
            onnx=onnx.__version__,
            onnxruntime=ort.__version__,
        ),
        model=dict(
            classifier="HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, max_leaf_nodes=15, max_depth=6, min_samples_leaf=40, l2_regularization=1.0)",
            sample_weight=f"spike windows {SPIKE_WEIGHT:g}, others 1",
            seed=MODEL_SEED,
            trees=int(model.n_iter_),
            onnx_bytes=len(model_bytes),
            onnx_opset={d.domain or "ai.onnx": d.version for d in onx.opset_import},
            onnx_ir_version=onx.ir_version,
            inputs={"features": "float32 [N, 5]"},
            outputs={"label": "int64 [N]", "probabilities": "float32 [N, 2]"},
        ),
        training=dict(seed=TRAIN_SEED, regions=TRAIN_REGIONS, days=TRAIN_DAYS, start=TRAIN_START, counts=counts(train), model_f1=train_scores["overall"]["f1"]),
        heldout=dict(
            seed=HELDOUT_SEED,
            regions=HELDOUT_REGIONS,
            days=HELDOUT_DAYS,
            start=HELDOUT_START,
            counts=counts(held),
            model=scores(pred_model, held),
            zscore_rule=scores(pred_z, held),
            onnx_sklearn_label_agreement=round(float(np.mean((p_sk >= THRESHOLD) == pred_model)), 6),
            onnx_sklearn_max_abs_dp=float(f"{float(np.max(np.abs(p_sk - p_held))):.2e}"),
        ),
        planted=planted,
    )
    (HERE / "evaluation.json").write_text(json.dumps(ev, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    t_end = time.perf_counter()
    timings = dict(
        data_s=t_data - t_start,
        train_s=t_train - t_data,
        total_s=t_end - t_start,
        machine=f"{platform.machine()}, {N_THREADS} training threads",
    )
    write_evaluation_md(ev, timings)
    update_readme(ev)
    print(table(ev), file=sys.stderr)
    print(planted_table(planted), file=sys.stderr)
    print(f"done in {t_end - t_start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
