"""GPU and model catalog of the vLLM engine model: memory, KV-cache capacity, cold start.

Numbers come from `shared/profiles/aiconfigurator/<gpu>/<gpu>.yaml` (memory, HBM bandwidth,
dense bf16 tensor FLOPS, NCCL memory) and the models' Hugging Face configs. Everything here is
pure arithmetic so the router, the simulated engine and the sandbox can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
DTYPE_BYTES = 2  # bf16 weights and KV cache

# vLLM's `--max-num-batched-tokens` default for chunked prefill on big GPUs; it sizes the
# activation peak of the memory-profiling run that vLLM subtracts before allocating KV blocks.
PROFILE_TOKENS = 8192
# CUDA context, cuBLAS/FlashAttention workspaces and captured CUDA graphs: memory vLLM sees as
# "non-torch" or graph memory. ~1 GiB matches vLLM's startup logs on H100 for 8B/70B.
BASE_RESERVE_BYTES = 1 * GIB
# Live activation buffers of the profiling run are ~2x one layer's widest tensors
# (input + gate/up output) because the allocator holds the next buffer before freeing.
ACTIVATION_FACTOR = 2
# NCCL buffers per GPU by TP degree (aiconfigurator yaml, `misc.nccl_mem`).
NCCL_RESERVE_BYTES = {1: 0, 2: 358_612_992, 4: 411_041_792, 8: 411_041_792}

# Fixed part of an engine start that does not scale with weight size: process start,
# torch.compile (cached), CUDA-graph capture of ~67 batch sizes, KV-cache allocation, warm-up.
ENGINE_INIT_S = 20.0
# Effective rate at which one GPU receives its weight shard from page cache / local NVMe
# (safetensors, mmap + H2D copy). 4 GB/s is typical of a local NVMe; remote object stores are
# slower, so callers may override it per call.
DEFAULT_WEIGHT_LOAD_GB_S = 4.0


class UnknownHardware(ValueError):
    """A GPU, model or (model, GPU, TP) deployment the engine model cannot represent."""


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: float
    hbm_tb_s: float
    bf16_tflops: float
    weight_load_gb_s: float = DEFAULT_WEIGHT_LOAD_GB_S
    gpus_per_node: int = 8

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params_b: float
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    mlp_dim: int
    vocab: int
    weight_bytes: int

    def kv_heads_per_gpu(self, tp: int) -> int:
        # vLLM replicates KV heads when TP exceeds their number (70B: 8 KV heads).
        return max(1, self.kv_heads // tp)

    def kv_bytes_per_token(self, tp: int) -> int:
        """KV bytes one token occupies on one GPU of a TP group (K and V, all layers)."""
        return 2 * self.layers * self.kv_heads_per_gpu(tp) * self.head_dim * DTYPE_BYTES


GPUS: dict[str, GpuSpec] = {
    "A100": GpuSpec("A100", memory_gib=80.0, hbm_tb_s=2.039, bf16_tflops=312.0),
    "H100": GpuSpec("H100", memory_gib=80.0, hbm_tb_s=3.35, bf16_tflops=989.0),
    "H200": GpuSpec("H200", memory_gib=141.0, hbm_tb_s=4.8, bf16_tflops=989.0),
}

MODELS: dict[str, ModelSpec] = {
    "llama-3-8b": ModelSpec(
        "llama-3-8b", params_b=8.03, layers=32, hidden=4096, q_heads=32, kv_heads=8,
        head_dim=128, mlp_dim=14336, vocab=128256, weight_bytes=16_060_522_496,
    ),
    "llama-3-70b": ModelSpec(
        "llama-3-70b", params_b=70.55, layers=80, hidden=8192, q_heads=64, kv_heads=8,
        head_dim=128, mlp_dim=28672, vocab=128256, weight_bytes=141_107_412_992,
    ),
}

# Deployments with measured or op-level profiles behind the step-time fit (serving/steptime.py).
PROFILED: frozenset[tuple[str, str, int]] = frozenset({
    ("llama-3-8b", "H100", 1), ("llama-3-8b", "A100", 1), ("llama-3-8b", "H200", 1),
    ("llama-3-70b", "H100", 4), ("llama-3-70b", "H100", 8),
    ("llama-3-70b", "A100", 4), ("llama-3-70b", "A100", 8),
    ("llama-3-70b", "H200", 4), ("llama-3-70b", "H200", 8),
})


def _lookup(kind: str, table: dict, name: str):
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise UnknownHardware(f"unknown {kind} {name!r} (known: {known})") from None


def gpu_spec(name: str) -> GpuSpec:
    return _lookup("GPU", GPUS, name)


def model_spec(name: str) -> ModelSpec:
    return _lookup("model", MODELS, name)


def reserve_bytes(model: ModelSpec, tp: int) -> int:
    """Per-GPU memory vLLM keeps out of the KV cache besides the weights."""
    widest = model.hidden + 2 * model.mlp_dim // tp  # residual stream + gate/up output
    activation = ACTIVATION_FACTOR * PROFILE_TOKENS * widest * DTYPE_BYTES
    return BASE_RESERVE_BYTES + activation + NCCL_RESERVE_BYTES.get(tp, NCCL_RESERVE_BYTES[8])


def _kv_budget_bytes(
    model: ModelSpec, gpu: GpuSpec, tp: int, gpu_memory_utilization: float
) -> int:
    """Per-GPU bytes left for KV blocks; raises when the deployment cannot run at all."""
    if tp < 1 or tp & (tp - 1) or tp > gpu.gpus_per_node:
        raise UnknownHardware(
            f"tensor-parallel degree {tp} unsupported (use 1, 2, 4 or 8 GPUs of one node)"
        )
    if model.q_heads % tp:
        raise UnknownHardware(
            f"{model.name} has {model.q_heads} query heads: TP {tp} cannot split them"
        )
    weights = model.weight_bytes / tp
    budget = gpu.memory_bytes * gpu_memory_utilization - weights - reserve_bytes(model, tp)
    if budget <= 0:
        raise UnknownHardware(
            f"{model.name} does not fit on {tp}x{gpu.name}: {weights / GIB:.1f} GiB of weights "
            f"per GPU vs {gpu.memory_gib * gpu_memory_utilization:.1f} GiB usable; raise TP"
        )
    return int(budget)


def check_deployment(model: str, gpu: str, tp: int, *, profiled: bool = False) -> None:
    """Raise UnknownHardware unless `tp` GPUs of `gpu` can serve `model` (and, if asked, the
    step-time model has profiles for exactly this combination)."""
    _kv_budget_bytes(model_spec(model), gpu_spec(gpu), tp, 0.9)
    if profiled and (model, gpu, tp) not in PROFILED:
        have = ", ".join(f"{m}/{g}/tp{t}" for m, g, t in sorted(PROFILED))
        raise UnknownHardware(f"no step-time profile for {model}/{gpu}/tp{tp} (profiled: {have})")


def kv_block_capacity(
    model: str, gpu: str, tp: int, gpu_memory_utilization: float = 0.9, block_size: int = 16
) -> int:
    """KV-cache blocks of one replica, as vLLM computes them at start-up.

    Blocks are allocated identically on every rank of the TP group, so the per-GPU budget
    divided by the per-GPU block size is the replica's capacity.
    """
    m, g = model_spec(model), gpu_spec(gpu)
    budget = _kv_budget_bytes(m, g, tp, gpu_memory_utilization)
    return budget // (m.kv_bytes_per_token(tp) * block_size)


def cold_start_s(
    model: str,
    gpu: str,
    tp: int,
    *,
    load_gb_s: float | None = None,
    init_s: float = ENGINE_INIT_S,
) -> float:
    """Seconds from launching an engine to serving: each rank reads its weight shard in
    parallel at the load bandwidth, then the fixed engine initialisation."""
    m, g = model_spec(model), gpu_spec(gpu)
    _kv_budget_bytes(m, g, tp, 0.9)
    rate = (load_gb_s if load_gb_s is not None else g.weight_load_gb_s) * 1e9
    return m.weight_bytes / tp / rate + init_s
