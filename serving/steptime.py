"""Time of one vLLM engine step on one replica, fitted to measured GPU profiles.

Whole-model step (seconds), with n = decode_batch + prefill_tokens tokens in the batch:

    layers * (lin(n) + ks*B + kd*C + kp*A + kpt*P)   transformer layers (per-layer fit)
  + lm_head(m)                                   logits for m = B (+1 if a prefill chunk) rows
  + 2 * layers * allreduce(n * hidden)           TP all-reduces after attention and MLP
  + cpu(m)                                       scheduler / input prep / sampler CPU time

lin is a convex piecewise-linear function of n (memory-bound weight read flattening into
compute-bound GEMMs), kd is the cost of reading one cached token's KV, kp the cost of one
unit of causal prefill attention work, kpt the attention's per-prefill-token cost. All
coefficients are non-negative, so a step never gets faster with more tokens.
Fitting lives in serving/steptime_fit.py (`python -m serving.steptime_fit fit`, see
docs/steptime.md); the hot path is pure-Python float arithmetic over serving/data/steptime.json.
"""

from __future__ import annotations

import bisect
import functools
import json
from pathlib import Path
from typing import Any

from serving.hardware import GPUS, MODELS, UnknownHardware, check_deployment

DATA_PATH = Path(__file__).resolve().parent / "data" / "steptime.json"

DECODE_CACHE = 1024  # decode_coeffs precomputed for batch 0..1024


def combo_key(model: str, gpu: str, tp: int) -> str:
    return f"{model}/{gpu}/tp{tp}"


class StepTimeModel:
    """Step-time model of one (model, gpu, tp) replica. Immutable after construction."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.model: str = params["model"]
        self.gpu: str = params["gpu"]
        self.tp: int = int(params["tp"])
        layers = float(params["layers"])
        ms = 1e-3
        lay = params["layer_ms"]
        # Whole-model lin(n) as segments: on [x_i, x_{i+1}) it is a_i + b_i * n (seconds).
        self._x: list[float] = [0.0, *[float(k) for k in lay["knots"]]]
        a, b = lay["c0"] + lay["att0"], lay["c1"]
        self._a: list[float] = [a * layers * ms]
        self._b: list[float] = [b * layers * ms]
        for k, h in zip(lay["knots"], lay["hinge"], strict=True):
            a -= h * k
            b += h
            self._a.append(a * layers * ms)
            self._b.append(b * layers * ms)
        self._ks = lay["ks"] * layers * ms
        self._kd = lay["kd"] * layers * ms
        self._kp = lay["kp"] * layers * ms
        self._kpt = lay["kpt"] * layers * ms
        # A step with prefill runs the prefill attention path; never cheaper than decode's.
        self._pre0 = max(0.0, lay["att0_pre"] - lay["att0"]) * layers * ms
        lm = params["lm_head_ms"]
        self._lm = (lm[0] * ms, lm[1] * ms, lm[2] * ms, float(params["lm_knot"]))
        cpu = params["cpu_ms"]
        self._cpu = (cpu[0] * ms, cpu[1] * ms)
        self._hidden = int(params["hidden"])
        ar = params.get("allreduce_ms")
        self._ar_x: list[float] = [float(v) for v in ar["elements"]] if ar else []
        # Two all-reduces per layer; folded here so a lookup is one interpolation.
        self._ar_y: list[float] = [2 * layers * v * ms for v in ar["ms"]] if ar else []
        self._decode: list[tuple[float, float]] = [
            self._coeffs(b) for b in range(DECODE_CACHE + 1)
        ]

    # -- components ---------------------------------------------------------------------------
    def _lin(self, n: float) -> float:
        i = bisect.bisect_right(self._x, n) - 1
        return self._a[i] + self._b[i] * n

    def _lm_head(self, m: float) -> float:
        l0, l1, l2, knot = self._lm
        return l0 + l1 * m + (l2 * (m - knot) if m > knot else 0.0)

    def _allreduce(self, n: float) -> float:
        xs = self._ar_x
        if not xs or n <= 0:
            return 0.0
        size = n * self._hidden
        ys = self._ar_y
        if size <= xs[0]:
            return ys[0]
        i = bisect.bisect_right(xs, size) - 1
        if i >= len(xs) - 1:  # beyond the table: extend the last (bandwidth-bound) segment
            i = len(xs) - 2
        return ys[i] + (ys[i + 1] - ys[i]) * (size - xs[i]) / (xs[i + 1] - xs[i])

    def _fixed(self, n: float, decode_batch: float, rows: float) -> float:
        """Everything except the KV-read and prefill-attention terms."""
        c0, c1 = self._cpu
        return (
            self._lin(n)
            + self._ks * decode_batch
            + self._lm_head(rows)
            + self._allreduce(n)
            + c0
            + c1 * rows
        )

    def _coeffs(self, batch: int) -> tuple[float, float]:
        return (self._fixed(batch, batch, batch), self._kd)

    # -- public -------------------------------------------------------------------------------
    def decode_coeffs(self, batch: int) -> tuple[float, float]:
        """(w, k): a pure-decode step of `batch` sequences with C context tokens in total takes
        w + k*C seconds. k is the same for every batch."""
        if batch <= DECODE_CACHE:
            return self._decode[batch]
        return self._coeffs(batch)

    def step_s(
        self, decode_batch: int, decode_context: int, prefill_tokens: int, prefill_attn: float
    ) -> float:
        """Seconds for one engine step; see the module docstring for the terms."""
        if prefill_tokens <= 0:
            # Exactly the closed form the simulator uses to fast-forward decode spans.
            w, k = self.decode_coeffs(decode_batch)
            return w + k * decode_context
        # One logits row per decoding sequence plus one for the (last) prefill chunk.
        rows = decode_batch + 1
        return (
            self._fixed(decode_batch + prefill_tokens, decode_batch, rows)
            + self._pre0
            + self._kpt * prefill_tokens
            + self._kd * decode_context
            + self._kp * prefill_attn
        )


@functools.cache
def _load(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


@functools.cache
def step_time_model(model: str, gpu: str, tp: int) -> StepTimeModel:
    """The fitted model of one deployment; raises UnknownHardware for anything unprofiled."""
    if model not in MODELS or gpu not in GPUS:
        from serving.hardware import gpu_spec, model_spec

        model_spec(model)
        gpu_spec(gpu)
    check_deployment(model, gpu, tp, profiled=True)
    combos = _load(str(DATA_PATH))["combos"]
    key = combo_key(model, gpu, tp)
    if key not in combos:
        raise UnknownHardware(f"no fitted step-time coefficients for {key}; run "
                              "`python -m serving.steptime_fit fit`")
    return StepTimeModel(combos[key])


def reload_coefficients() -> None:
    """Forget the cached coefficients and models: ``DATA_PATH`` has just been rewritten."""
    _load.cache_clear()
    step_time_model.cache_clear()
