"""A workload as load-generator shots: what an open-loop HTTP replay sends.

Used by ``autopoiesis replay`` and the replay stage. Prompts are synthesised so
that the router and the engines see the workload's token counts and prefix
sharing under the byte tokenizer (``serving.prompt_tokens``); against a real engine
the token counts are approximate, since its tokenizer differs.
"""

from __future__ import annotations

from sandbox.replay.loadgen import Shot
from sandbox.workload import Workload
from serving.prompt_tokens import BLOCK_TOKENS, synth_prompt


def workload_shots(
    workload: Workload, rate_scale: float, duration: float | None, max_requests: int
) -> list[Shot]:
    """A workload's requests as shots: arrivals divided by ``rate_scale``, prefixes rebuilt.

    Each shot asks for the workload's ``output_tokens`` (what the engine generates),
    and only the requests sent within ``duration`` seconds (after scaling) are kept.
    """
    # A trace's prefix hash covers prefix_block_tokens tokens (512 for Mooncake); the
    # prompt text is built in 16-token blocks, so each hash stands for several of them.
    # Repeating its text is enough: block hashes chain, so position keeps them distinct.
    per_hash = max(1, workload.prefix_block_tokens // BLOCK_TOKENS)
    hashes = workload.prefix_hashes
    sessions = workload.session_ids
    shots = []
    for i in range(min(len(workload), max_requests)):
        at = float(workload.arrival_s[i]) / rate_scale
        if duration is not None and at >= duration:
            break
        blocks = [h for h in hashes[i] for _ in range(per_hash)] if hashes else ()
        shots.append(Shot(
            at=at,
            prompt=synth_prompt(int(workload.prompt_tokens[i]), blocks, salt=i),
            max_tokens=int(workload.output_tokens[i]),
            session_id=sessions[i] if sessions else "",
        ))
    return shots
