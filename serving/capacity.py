"""A replica's saturation throughput, estimated from the step-time model.

Planners need to compare configurations without simulating each one: this is
the back-of-the-envelope they would do by hand. At saturation a replica keeps
as many sequences decoding as sequences and KV blocks allow; each request
costs its prefill (run alone) plus its share of the decode steps.
"""

from __future__ import annotations

from serving.engine import EngineConfig, StepTime

PREFILL_PROBE_TOKENS = 2048
"""Prompt length at which a replica's prefill rate is quoted: past ~1k tokens the rate
of the fitted step-time models is flat (it falls for shorter prompts, and slowly for
longer ones as attention grows)."""


def saturation_rps(
    steptime: StepTime, kv_blocks: int, config: EngineConfig, prompt: float, output: float
) -> float:
    prompt, output = max(prompt, 1.0), max(output, 1.0)
    avg_context = prompt + output / 2
    blocks_per_seq = (prompt + output) / config.block_size
    batch = int(max(1, min(config.max_num_seqs, kv_blocks / blocks_per_seq)))
    w, k = steptime.decode_coeffs(batch)
    decode_step = w + k * batch * avg_context
    chunk = min(prompt, config.max_num_batched_tokens)
    chunks = prompt / chunk
    prefill = chunks * steptime.step_s(0, 0, int(chunk), chunk * chunk / 2)
    per_request = prefill + (output - 1) * decode_step / batch
    return 1.0 / per_request


def prefill_tps(steptime: StepTime, config: EngineConfig) -> float:
    """Prompt tokens per second a replica prefills alone, on ``PREFILL_PROBE_TOKENS`` prompts."""
    n = min(PREFILL_PROBE_TOKENS, config.max_num_batched_tokens)
    return n / steptime.step_s(0, 0, n, n * n / 2)
