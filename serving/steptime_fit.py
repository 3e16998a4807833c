"""Offline fit of the step-time model (serving/steptime.py) to the measured GPU profiles.

Reads the profile tables under `shared/profiles` (`$AUTOPOIESIS_SHARED`, else ../shared),
fits the per-layer model, lm_head, all-reduce and CPU terms, and writes
serving/data/steptime.json: `python -m serving.steptime_fit fit` (see docs/steptime.md).
numpy/pandas are imported lazily, so serving never pays for them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.hardware import GPUS, MODELS, PROFILED
from serving.shared_data import shared_dir
from serving.steptime import DATA_PATH, combo_key, reload_coefficients, step_time_model

# Hinge knots of lin(n) (tokens), dense where GEMMs leave the memory-bound regime. None past
# 1024: the GEMMs are compute-bound and linear there (Vidur's A100 op profile is linear to
# within 5 % from 1k to 32k tokens), and a free convex lin would otherwise soak up the
# quadratic prefill attention of the single-sequence prefill rows.
KNOTS: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
LM_KNOT = 192  # lm_head: flat (weight read) up to ~192 rows, then compute-bound


@dataclass(frozen=True)
class Row:
    """One profile measurement, reduced to the features of the per-layer model.

    kind: "layer" (a whole measured layer), "linear" (sum of the non-attention ops of a layer),
    "attn" (attention kernel alone), "lm_head". y_ms is per layer (per call for lm_head).
    """

    source: str
    combo: str  # combo key, or "<gpu>" for lm_head rows
    kind: str
    n: float
    b: float
    c: float
    a: float
    eager: float
    y_ms: float
    layers: int
    pt: float = 0.0  # prefill tokens of an "attn" row (other kinds: n - b)


MEASURED = {"H100": "h100-layer-measured", "H200": "h200-layer-measured"}
MEASURED_MODELS = {
    "llama3-8b-tp1": ("llama-3-8b", 1),
    "llama3-70b-tp4": ("llama-3-70b", 4),
    "llama3-70b-tp8": ("llama-3-70b", 8),
}
VIDUR_A100 = "vidur-a100-mlp"
AIC_A100_ATTN = "aiconfigurator-a100-attention"
VIDUR_OPS = (
    "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
AIC_DIR = {"A100": "a100_sxm", "H100": "h100_sxm", "H200": "h200_sxm"}
MAX_DECODE_BATCH = 1024
MAX_KV_TOKENS = 4_000_000  # beyond any replica's KV capacity
MAX_PREFILL_TOKENS = 16384  # chunked-prefill budgets stay below this


def load_rows(shared: Path | None = None) -> list[Row]:
    """All training rows from the profile tables in `shared/profiles`."""
    prof = (shared or shared_dir()) / "profiles"
    return _measured_rows(prof) + _vidur_rows(prof) + _aiconfigurator_rows(prof)


def _measured_rows(prof: Path) -> list[Row]:
    """Our own layer profiles: whole decoder layers (decode, prefill) and the LM head."""
    import pandas as pd

    rows: list[Row] = []
    for gpu, src in MEASURED.items():
        df = pd.read_csv(prof / src / "layer_profile.csv")
        for r in df.itertuples(index=False):
            if r.phase == "lm_head":
                rows.append(Row(src, gpu, "lm_head", r.tokens, 0, 0, 0, 0, r.layer_ms, 1))
                continue
            model, tp = MEASURED_MODELS[r.model]
            key = combo_key(model, gpu, tp)
            if r.phase == "decode":
                # Measured in a CUDA graph: what vLLM runs for decode-only batches.
                rows.append(Row(src, key, "layer", r.batch, r.batch, r.batch * r.context, 0, 0,
                                r.layer_ms, r.layers))
            else:
                # One causal sequence run eagerly: attention work t*t/2, plus launch overhead.
                t = float(r.tokens)
                rows.append(Row(src, key, "layer", t, 0, 0, t * t / 2, 1, r.layer_ms, r.layers))
    return rows


def _vidur_rows(prof: Path) -> list[Row]:
    """Vidur's A100 MLP profiles: the linear (GEMM) part of a layer."""
    import pandas as pd

    rows: list[Row] = []
    cols = [f"time_stats.{op}.median" for op in VIDUR_OPS]
    for model, folder in (("llama-3-8b", "Meta-Llama-3-8B"), ("llama-3-70b", "Meta-Llama-3-70B")):
        df = pd.read_csv(prof / "vidur/compute/a100/meta-llama" / folder / "mlp.csv.gz")
        df = df[df.num_tokens <= 2 * MAX_PREFILL_TOKENS]
        total = df[cols].sum(axis=1)
        for tp, n, y in zip(df.num_tensor_parallel_workers, df.num_tokens, total, strict=True):
            if (model, "A100", tp) in PROFILED:
                rows.append(Row(VIDUR_A100, combo_key(model, "A100", tp), "linear", n, 0, 0, 0, 0,
                                float(y), MODELS[model].layers))
    return rows


def _aiconfigurator_rows(prof: Path) -> list[Row]:
    """aiconfigurator's A100 attention kernels (vLLM), for the head layouts we profile."""
    import pandas as pd

    rows: list[Row] = []
    heads = {}
    for (model, gpu, tp) in PROFILED:
        if gpu == "A100":
            m = MODELS[model]
            heads[(m.q_heads // tp, m.kv_heads_per_gpu(tp))] = (model, tp)
    d = prof / "aiconfigurator" / AIC_DIR["A100"]
    for table, phase in (("generation", "decode"), ("context", "prefill")):
        df = pd.read_csv(d / f"attention_vllm_0.14.0_{table}_attention_perf.csv.gz")
        df = df[(df.head_dim == 128) & (df.kv_cache_dtype == "bfloat16")]
        for r in df.itertuples(index=False):
            hit = heads.get((r.num_heads, r.num_key_value_heads))
            if hit is None:
                continue
            model, tp = hit
            key = combo_key(model, "A100", tp)
            lay = MODELS[model].layers
            if phase == "decode":
                ctx = float(r.batch_size * r.step)
                if r.batch_size <= MAX_DECODE_BATCH and ctx <= MAX_KV_TOKENS:
                    rows.append(Row(AIC_A100_ATTN, key, "attn", 0, r.batch_size, ctx, 0, 0,
                                    r.latency, lay))
            else:
                tokens = r.batch_size * r.isl
                if r.isl >= 16 and tokens <= MAX_PREFILL_TOKENS:
                    work = r.batch_size * r.isl * r.isl / 2
                    rows.append(Row(AIC_A100_ATTN, key, "attn", 0, 0, 0, work, 0, r.latency, lay,
                                    float(tokens)))
    return rows


def _nnls(a: Any, y: Any, iters: int = 200) -> Any:
    """Non-negative least squares (Lawson-Hanson active set); scipy is not a dependency."""
    import numpy as np

    m = a.shape[1]
    x = np.zeros(m)
    passive = np.zeros(m, dtype=bool)
    w = a.T @ (y - a @ x)
    for _ in range(iters):
        if passive.all() or (w[~passive] <= 1e-12).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(m)
            z[passive] = np.linalg.lstsq(a[:, passive], y, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = a.T @ (y - a @ x)
    return x


def _relative_nnls(design: Any, y: Any) -> Any:
    """NNLS minimising squared *relative* error, with columns scaled for conditioning."""
    import numpy as np

    a = design / y[:, None]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    x = _nnls(a / scale, np.ones_like(y))
    return x / scale


LAYER_TAIL = ("ks", "kd", "kp", "kpt", "att0", "att0_pre", "eager")


def _prefill_tokens(r: Row) -> float:
    return r.n - r.b if r.kind != "attn" else r.pt


def _layer_design(rows: list[Row]) -> Any:
    """Columns: c0, c1, hinges..., then LAYER_TAIL."""
    import numpy as np

    out = np.zeros((len(rows), 2 + len(KNOTS) + len(LAYER_TAIL)))
    t = 2 + len(KNOTS)
    for i, r in enumerate(rows):
        if r.kind in ("layer", "linear"):
            out[i, 0] = 1.0
            out[i, 1] = r.n
            for j, k in enumerate(KNOTS):
                out[i, 2 + j] = max(0.0, r.n - k)
        if r.kind in ("layer", "attn"):
            out[i, t : t + 4] = (r.b, r.c, r.a, _prefill_tokens(r))
        if r.kind == "attn":
            out[i, t + 4 if r.a == 0 else t + 5] = 1.0
        out[i, t + 6] = r.eager
    return out


def _unpack_layer(x: Any) -> dict[str, Any]:
    h = len(KNOTS)
    out = {
        "knots": list(KNOTS), "c0": float(x[0]), "c1": float(x[1]),
        "hinge": [float(v) for v in x[2 : 2 + h]],
    }
    out.update({name: float(v) for name, v in zip(LAYER_TAIL, x[2 + h :], strict=True)})
    return out


def predict_row_ms(fit: dict[str, Any], row: Row) -> float:
    """The fitted model's value for the quantity a profile row measured (ms per layer/call)."""
    if row.kind == "lm_head":
        l0, l1, l2 = fit["lm_head"][row.combo]
        return l0 + l1 * row.n + l2 * max(0.0, row.n - LM_KNOT)
    p = fit["layer"][row.combo]
    lin = p["c0"] + p["c1"] * row.n + sum(
        h * max(0.0, row.n - k) for k, h in zip(p["knots"], p["hinge"], strict=True)
    )
    attn = p["ks"] * row.b + p["kd"] * row.c + p["kp"] * row.a + p["kpt"] * _prefill_tokens(row)
    if row.kind == "linear":
        return lin
    if row.kind == "attn":
        return (p["att0"] if row.a == 0 else p["att0_pre"]) + attn
    return lin + attn + p["eager"] * row.eager


def fit_rows(rows: list[Row]) -> dict[str, Any]:
    """Fit every combo's layer model and every GPU's lm_head from `rows`."""
    import numpy as np

    layer: dict[str, Any] = {}
    for key in sorted({r.combo for r in rows if r.kind != "lm_head"}):
        sub = [r for r in rows if r.combo == key]
        x = _relative_nnls(_layer_design(sub), np.array([r.y_ms for r in sub]))
        layer[key] = _unpack_layer(x)
    lm: dict[str, list[float]] = {}
    for gpu in sorted({r.combo for r in rows if r.kind == "lm_head"}):
        sub = [r for r in rows if r.kind == "lm_head" and r.combo == gpu]
        design = np.array([[1.0, r.n, max(0.0, r.n - LM_KNOT)] for r in sub])
        lm[gpu] = [float(v) for v in _relative_nnls(design, np.array([r.y_ms for r in sub]))]
    return {"layer": layer, "lm_head": lm, "lm_knot": LM_KNOT}


def _lin_slope_at(p: dict[str, Any], n: float) -> float:
    return p["c1"] + sum(h for k, h in zip(p["knots"], p["hinge"], strict=True) if n > k)


def _lm_for(fit: dict[str, Any], model: str, gpu: str, tp: int) -> list[float]:
    """lm_head(m) for a deployment: the measured 4096x128256 projection, scaled to the model's
    (hidden x vocab / tp) shard; GPUs without an lm_head profile (A100) borrow H100's, with the
    weight-read part scaled by HBM bandwidth and the compute part by the ratio of the fitted
    large-batch GEMM slopes of the 8B layers on both GPUs."""
    m = MODELS[model]
    size = m.hidden * m.vocab / tp / (4096 * 128256)
    if gpu in fit["lm_head"]:
        return [v * size for v in fit["lm_head"][gpu]]
    ref = fit["lm_head"]["H100"]
    mem = GPUS["H100"].hbm_tb_s / GPUS[gpu].hbm_tb_s
    big = 8192.0
    comp = _lin_slope_at(fit["layer"][combo_key("llama-3-8b", gpu, 1)], big) / _lin_slope_at(
        fit["layer"][combo_key("llama-3-8b", "H100", 1)], big
    )
    return [ref[0] * mem * size, ref[1] * comp * size, ref[2] * comp * size]


def _allreduce_table(prof: Path, gpu: str, tp: int) -> dict[str, list[float]] | None:
    """Latency (ms) vs message elements (bf16) for one all-reduce: the faster of vLLM's custom
    all-reduce under CUDA graphs and NCCL, which is the choice vLLM makes by message size."""
    if tp == 1:
        return None
    import pandas as pd

    d = prof / "aiconfigurator" / AIC_DIR[gpu]
    cu = pd.read_csv(next(d.glob("comm_vllm_*_custom_allreduce_perf.csv.gz")))
    cu = cu[(cu.num_gpus == tp) & (cu.backend == "vllm_graph")]
    nc = pd.read_csv(next(d.glob("comm_nccl_*_nccl_perf.csv.gz")))
    nc = nc[(nc.num_gpus == tp) & (nc.op_name == "all_reduce") & (nc.nccl_dtype == "half")]
    best: dict[int, float] = {}
    for size, lat in [*zip(cu.message_size, cu.latency, strict=True),
                      *zip(nc.message_size, nc.latency, strict=True)]:
        best[int(size)] = min(best.get(int(size), float("inf")), float(lat))
    sizes = sorted(best)
    ms, run = [], 0.0
    for s in sizes:
        run = max(run, best[s])  # a bigger message is never faster (removes timing noise)
        ms.append(run)
    return {"elements": [float(s) for s in sizes], "ms": ms}


def _cpu_overhead(prof: Path, tp: int) -> list[float]:
    """Per-step CPU time (ms) = o0 + o1 * sequences, from Vidur's vLLM overhead profile.

    Only input preparation and sampling are kept: vLLM V1 rewrote the scheduler to be
    incremental and moved detokenisation/output processing to the API-server process, so
    `schedule` and `process_model_outputs` of the older engine no longer sit on the critical
    path; `ray_comm_time` disappears with V1's multiprocessing executor.
    """
    import numpy as np
    import pandas as pd

    df = pd.read_csv(prof / "vidur/legacy/a100_cpu_overheads.csv")
    want = 1 if tp == 1 else min(4, tp)
    df = df[df.tensor_parallel_degree == want]
    y = (df.prepare_inputs_e2e_median + df.sampler_e2e_median).to_numpy()
    design = np.stack([np.ones(len(df)), df.batch_size.to_numpy(dtype=float)], axis=1)
    return [float(v) for v in _relative_nnls(design, y)]


def build_params(fit: dict[str, Any], shared: Path | None = None) -> dict[str, Any]:
    """Everything the hot path needs, per profiled deployment."""
    prof = (shared or shared_dir()) / "profiles"
    combos = {}
    for model, gpu, tp in sorted(PROFILED):
        key = combo_key(model, gpu, tp)
        m = MODELS[model]
        combos[key] = {
            "model": model, "gpu": gpu, "tp": tp, "layers": m.layers, "hidden": m.hidden,
            "layer_ms": fit["layer"][key], "lm_knot": LM_KNOT,
            "lm_head_ms": _lm_for(fit, model, gpu, tp),
            "allreduce_ms": _allreduce_table(prof, gpu, tp),
            "cpu_ms": _cpu_overhead(prof, tp),
        }
    return combos


SOURCE_FILES = {
    "h100-layer-measured": ["profiles/h100-layer-measured/layer_profile.csv"],
    "h200-layer-measured": ["profiles/h200-layer-measured/layer_profile.csv"],
    VIDUR_A100: [
        "profiles/vidur/compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv.gz",
        "profiles/vidur/compute/a100/meta-llama/Meta-Llama-3-70B/mlp.csv.gz",
    ],
    AIC_A100_ATTN: [
        "profiles/aiconfigurator/a100_sxm/attention_vllm_0.14.0_generation_attention_perf.csv.gz",
        "profiles/aiconfigurator/a100_sxm/attention_vllm_0.14.0_context_attention_perf.csv.gz",
    ],
}
AUX_FILES = [
    "profiles/aiconfigurator/<gpu>/comm_vllm_*_custom_allreduce_perf.csv.gz (all-reduce)",
    "profiles/aiconfigurator/<gpu>/comm_nccl_*_nccl_perf.csv.gz (all-reduce)",
    "profiles/vidur/legacy/a100_cpu_overheads.csv (per-step CPU time)",
]


def fit_and_write(shared: Path | None = None, path: Path = DATA_PATH) -> dict[str, Any]:
    rows = load_rows(shared)
    fit = fit_rows(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.source] = counts.get(r.source, 0) + 1
    doc = {
        "version": 1,
        "units": "ms (converted to seconds by serving.steptime)",
        "form": "layers*(lin(n)+ks*B+kd*C+kp*A+kpt*P) + lm_head(m) + 2*layers*allreduce(n*hidden) "
                "+ cpu0 + cpu1*m; lin convex piecewise-linear in n with hinges at `knots`",
        "sources": {s: {"files": SOURCE_FILES[s], "rows": counts.get(s, 0)} for s in SOURCE_FILES},
        "auxiliary": AUX_FILES,
        "combos": build_params(fit, shared),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    reload_coefficients()
    return doc


def main(argv: list[str]) -> int:
    if argv[:1] != ["fit"]:
        print("usage: python -m serving.steptime_fit fit", file=sys.stderr)
        return 2
    doc = fit_and_write()
    for key in doc["combos"]:
        m, g, t = key.split("/")
        stm = step_time_model(m, g, int(t[2:]))
        w1, k = stm.decode_coeffs(1)
        print(f"{key:24s} decode b=1 ctx=1k {1e3 * (w1 + k * 1024):6.2f} ms  "
              f"b=256 ctx=256x2k {1e3 * stm.step_s(256, 256 * 2048, 0, 0):6.2f} ms  "
              f"prefill 8k {1e3 * stm.step_s(0, 0, 8192, 8192 * 4096):7.2f} ms")
    print(f"wrote {DATA_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
