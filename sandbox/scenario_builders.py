"""How each named scenario is built: its trace stretch, its cluster, its events, its SLO.

The catalogue (names, sizes, descriptions) and ``build_scenario`` are in
``sandbox.scenarios``; this module holds the builders it points to, the calibrated loads
they run at (``Load``) and the ``Size`` of one build. A builder returns the workload at
full per-unit load for ``size.duration_s``; ``build_scenario`` thins it to ``size.keep``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from sandbox.scenario_spec import SLO, ClusterEvent, ClusterSpec
from sandbox.splits import Split, pool_rows
from sandbox.stretches import at_utilization, fleet_capacity, ramp, trace, trace_segment
from sandbox.transforms import concat, resample_lengths, time_slice
from sandbox.workload import Workload
from serving.contract import Plan, ReplicaSpec

MODEL_8B = "llama-3-8b"
MODEL_70B = "llama-3-70b"


# ---------------------------------------------------------------------------
# Building blocks


@dataclass(frozen=True)
class Size:
    """How big one build of a scenario is, and which split of its traces it replays."""

    units: int
    """Fleet units at this scale (replicas, or replica groups: see each scenario)."""
    base_units: int
    """Fleet units at scale 1; traffic is thinned by ``units / base_units``."""
    duration_s: float
    """Length of the arrival process (events are placed as fractions of it)."""
    split: Split = "train"
    """Which region of each trace the stretches come from (``sandbox.splits``)."""

    @property
    def keep(self) -> float:
        return self.units / self.base_units


def rng_stream(seed: int, name: str, step: str) -> np.random.Generator:
    """One independent stream per (scenario, step, seed): adding a step to one scenario
    never changes another's traffic (crc32, not hash(): stable across processes)."""
    return np.random.default_rng([seed, zlib.crc32(f"{name}/{step}".encode())])


def _homogeneous(model: str, gpu: str, tp: int, replicas: int, spare: int = 0) -> ClusterSpec:
    """``replicas`` identical replicas on a pool of exactly their GPUs plus ``spare``."""
    return ClusterSpec(
        model=model,
        gpus={gpu: replicas * tp + spare},
        plan=Plan(tuple(ReplicaSpec(gpu, tp) for _ in range(replicas))),
    )


# ---------------------------------------------------------------------------
# The scenarios. Each builder returns the workload at full per-unit load for
# ``size.duration_s``; ``build_scenario`` thins it to ``size.keep``.

Built = tuple[Workload, ClusterSpec, tuple[ClusterEvent, ...], SLO]


@dataclass(frozen=True)
class Load:
    """A calibrated load for each split.

    The parts of a trace differ in ways the capacity estimate does not see (the Azure conv
    trace's oldest part has mean outputs of ~260 tokens at ~5 req/s, its middle ~140 at
    ~7), so one utilisation puts the two splits at different operating points. Each split
    is calibrated on its own, on the baselines only, to the same regime: the better
    routing baselines at roughly 60-95 % SLO attainment on average over seeds.
    """

    train: float
    test: float

    def of(self, split: str) -> float:
        return self.train if split == "train" else self.test


# Calibrated loads, as a fraction of the fleet's estimated capacity (``at_utilization``)
# for the replayed stretch: see the module docstring. The simulated knee sits near 1.0
# for decode-bound traffic; prefill-heavy code traffic saturates earlier in TPOT because
# chunked prefills stretch the decode steps they share a batch with.
CONV_UTIL = Load(1.0, 1.08)
CODE_UTIL = Load(0.24, 0.15)  # the mean; bursts run at ~4x it
SHIFT_CONV_UTIL, SHIFT_CODE_UTIL = Load(0.92, 0.92), Load(0.25, 0.25)
LOSS_UTIL = Load(0.55, 0.52)  # of the full fleet: the half left after the loss is near its knee
FAIL_UTIL = Load(0.70, 0.72)
MIXED_UTIL = Load(0.95, 1.05)
MOON_UTIL = Load(0.70, 0.70)  # below 1: long prompts queue behind each other's prefills
RAMP_LO, RAMP_HI = 0.4, 1.6  # slow-ramp: from/to these multiples of the plan's capacity,
RAMP_LOAD = Load(1.0, 1.05)  # times this per split
TP_UTIL = Load(0.9, 1.02)
BWB_UTIL = Load(1.06, 1.08)  # past ~1.09 TPOT collapses for every policy alike


def _h100s(n: int, tp: int = 1) -> tuple[ReplicaSpec, ...]:
    return tuple(ReplicaSpec("H100", tp) for _ in range(n))


def _stretch(
    seed: int,
    name: str,
    size: Size,
    util: Load | float,
    model: str,
    specs: tuple[ReplicaSpec, ...],
    trace_name: str = "azure-conv",
) -> Workload:
    """A stretch of ``trace_name`` at ``util`` x the capacity of ``specs`` (the base fleet)."""
    load = util.of(size.split) if isinstance(util, Load) else util
    return trace_segment(
        trace(trace_name),
        at_utilization(load, model, specs),
        size.duration_s,
        rng_stream(seed, name, "segment"),
        size.split,
    )


def steady_conv(seed: int, size: Size) -> Built:
    w = _stretch(seed, "steady-conv", size, CONV_UTIL, MODEL_8B, _h100s(size.base_units))
    return w, _homogeneous(MODEL_8B, "H100", 1, size.units), (), SLO()


def bursty_code(seed: int, size: Size) -> Built:
    specs = _h100s(size.base_units)
    w = _stretch(seed, "bursty-code", size, CODE_UTIL, MODEL_8B, specs, "azure-code")
    return w, _homogeneous(MODEL_8B, "H100", 1, size.units), (), SLO()


def length_shift(seed: int, size: Size) -> Built:
    # Each phase at its own calibrated load: the shift is in what the requests are
    # (long chats -> bursty, prefill-heavy code), which moves the knee under a policy.
    half = size.duration_s / 2
    specs = _h100s(size.base_units)
    conv = trace_segment(
        trace("azure-conv"),
        at_utilization(SHIFT_CONV_UTIL.of(size.split), MODEL_8B, specs),
        half,
        rng_stream(seed, "length-shift", "conv"),
        size.split,
    )
    code = trace_segment(
        trace("azure-code"),
        at_utilization(SHIFT_CODE_UTIL.of(size.split), MODEL_8B, specs),
        half,
        rng_stream(seed, "length-shift", "code"),
        size.split,
    )
    gap = max(0.0, half - float(conv.arrival_s[-1]))
    w = replace(concat(conv, code, gap_s=gap), name="azure-conv>azure-code")
    return w, _homogeneous(MODEL_8B, "H100", 1, size.units), (), SLO()


def gpu_loss(seed: int, size: Size) -> Built:
    # llama-3-70b TP4 replicas (cold start ~29 s). Half the GPUs leave at 30 % of the
    # run and come back at 55 %: the static plan stays at half size for the rest of
    # the run, a rescheduling policy restarts replicas on the returned GPUs.
    d = size.duration_s
    w = _stretch(seed, "gpu-loss", size, LOSS_UTIL, MODEL_70B, _h100s(size.base_units, 4))
    cluster = _homogeneous(MODEL_70B, "H100", 4, size.units)
    lost = 4 * (size.units // 2)
    events = (
        ClusterEvent(at_s=round(0.30 * d, 3), kind="remove_gpus", gpu="H100", count=lost),
        ClusterEvent(at_s=round(0.55 * d, 3), kind="add_gpus", gpu="H100", count=lost),
    )
    return w, cluster, events, SLO()


def replica_failure(seed: int, size: Size) -> Built:
    # Two crashes of different replicas, each a ~24 s cold start with its in-flight
    # requests retried: the backlog lands on the survivors.
    d = size.duration_s
    w = _stretch(seed, "replica-failure", size, FAIL_UTIL, MODEL_8B, _h100s(size.base_units))
    events = (
        ClusterEvent(at_s=round(0.25 * d, 3), kind="fail_replica", replica=0),
        ClusterEvent(at_s=round(0.60 * d, 3), kind="fail_replica", replica=1),
    )
    return w, _homogeneous(MODEL_8B, "H100", 1, size.units), events, SLO()


def _pairs(units: int) -> tuple[ReplicaSpec, ...]:
    return tuple(ReplicaSpec(g) for g in ("H100", "A100") for _ in range(units))


def mixed_pool(seed: int, size: Size) -> Built:
    # One unit = one H100 + one A100 replica; the A100 has ~1/3 of the H100's
    # throughput, so an even split overloads the A100s long before the H100s.
    w = _stretch(seed, "mixed-pool", size, MIXED_UTIL, MODEL_8B, _pairs(size.base_units))
    cluster = ClusterSpec(
        model=MODEL_8B,
        gpus={"H100": size.units, "A100": size.units},
        plan=Plan(_pairs(size.units)),
    )
    return w, cluster, (), SLO()


def prefix_heavy(seed: int, size: Size) -> Built:
    # Mooncake: 15k-token prompts (p99 66k) with 512-token prefix block hashes; an
    # H100 holds ~450k KV tokens of llama-3-8b, so every request fits but only ~30
    # long prompts do at once. Multi-turn conversations reuse prefixes, so where a
    # request lands decides whether its prefill is mostly cached.
    specs = _h100s(size.base_units)
    w = _stretch(seed, "prefix-heavy", size, MOON_UTIL, MODEL_8B, specs, "mooncake")
    # TTFT 2 s cannot be met even unloaded for prompts past ~40k tokens (prefill alone
    # takes longer); 5 s keeps the SLO about queueing and caching, not prompt length.
    return w, _homogeneous(MODEL_8B, "H100", 1, size.units), (), SLO(ttft_s=5.0, tpot_s=0.1)


def slow_ramp(seed: int, size: Size) -> Built:
    # Load ramps linearly from RAMP_LO to RAMP_HI x the plan's capacity; the pool has as
    # many spare H100s as the plan uses, so an autoscaler can grow into them (cold start
    # ~24 s) while the static plan saturates in the last part of the run.
    d = size.duration_s
    mid = (RAMP_LO + RAMP_HI) / 2
    # The flat stretch runs at the ramp's mean load and lasts as long as the ramp.
    load = mid * RAMP_LOAD.of(size.split)
    flat = _stretch(seed, "slow-ramp", size, load, MODEL_8B, _h100s(size.base_units))
    w = time_slice(ramp(flat, RAMP_LO / mid, RAMP_HI / mid), 0.0, d)
    cluster = _homogeneous(MODEL_8B, "H100", 1, size.units, spare=size.units)
    return w, cluster, (), SLO()


def _tp_pair(units: int) -> tuple[ReplicaSpec, ...]:
    return tuple(ReplicaSpec("H100", tp) for tp in (8, 4) for _ in range(units))


def llama70b_tp(seed: int, size: Size) -> Built:
    # One TP8 (8 GPUs) and one TP4 (4 GPUs) llama-3-70b replica: the TP8 one is ~1.5x
    # faster, so splitting requests evenly overloads the TP4 one. One unit = the pair.
    w = _stretch(seed, "llama70b-tp", size, TP_UTIL, MODEL_70B, _tp_pair(size.base_units))
    cluster = ClusterSpec(
        model=MODEL_70B, gpus={"H100": 12 * size.units}, plan=Plan(_tp_pair(size.units))
    )
    return w, cluster, (), SLO()


def decode_heavy(seed: int, size: Size) -> Built:
    # BWB translation lengths (~1.1k in, ~1.6k out) on Azure conv arrival times: long
    # decodes fill the KV cache, so preemption and KV-aware routing matter. Lengths are
    # drawn iid from the split's rows of BWB, so the capacity is that of their mean lengths.
    bwb = pool_rows(trace("bwb"), size.split)
    cap = fleet_capacity(
        MODEL_8B,
        _h100s(size.base_units),
        float(bwb.prompt_tokens.mean()),
        float(bwb.output_tokens.mean()),
    )
    arrivals = trace_segment(
        trace("azure-conv"),
        BWB_UTIL.of(size.split) * cap,
        size.duration_s,
        rng_stream(seed, "decode-heavy", "segment"),
        size.split,
    )
    lengths_seed = int(rng_stream(seed, "decode-heavy", "lengths").integers(2**31))
    w = replace(resample_lengths(arrivals, bwb, lengths_seed), name="bwb@azure-conv")
    return w, _homogeneous(MODEL_8B, "H100", 1, size.units), (), SLO()
