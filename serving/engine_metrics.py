"""What a simulated vLLM engine counts, and its ``/metrics`` page in vLLM V1's names.

``VllmMetrics`` holds the counters and histograms the engine server updates per
request and renders them with vLLM's metric names and label set (``model_name``,
``engine``), in the new spelling (vLLM >= 0.10) or the old one, so the router's
scraper and dashboards read it as they read a real engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving import prom
from serving.engine import EngineConfig

# vLLM V1's histogram buckets (vllm/v1/metrics/loggers.py), so dashboards and
# the scraper see the same resolution as on a real engine.
# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
               2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# fmt: on


@dataclass
class VllmMetrics:
    """The counters and histograms of one engine, as vLLM keeps them."""

    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_queries: int = 0
    """Prompt tokens looked up in the prefix cache."""
    prefix_hits: int = 0
    """Of those, tokens found cached."""
    success: dict[str, int] = field(default_factory=lambda: {"length": 0, "stop": 0, "abort": 0})
    """Finished requests by finish reason."""
    ttft: prom.Histogram = field(default_factory=lambda: prom.Histogram(TTFT_BUCKETS))
    itl: prom.Histogram = field(default_factory=lambda: prom.Histogram(ITL_BUCKETS))
    e2e: prom.Histogram = field(default_factory=lambda: prom.Histogram(E2E_BUCKETS))

    def record(self, output_tokens: int, start: float, first: float, last: float) -> None:
        """One request answered in full: ``start``, first and last token times (s)."""
        n = output_tokens
        self.generation_tokens_total += n
        self.success["length"] += 1
        self.ttft.observe(first - start)
        if n > 1:
            self.itl.observe((last - first) / (n - 1))
        self.e2e.observe(last - start)

    # Long for a reason: one header and sample per vLLM metric, in vLLM's order.
    def render(
        self,
        *,
        model_name: str,
        old_names: bool,
        running: int,
        waiting: int,
        kv_used: int,
        kv_blocks: int,
        preemptions: int,
        engine_config: EngineConfig,
    ) -> str:
        """The ``/metrics`` page: these counters and the engine's state now."""
        old = old_names
        lab = {"engine": "0", "model_name": model_name}
        kv_name = "vllm:gpu_cache_usage_perc" if old else "vllm:kv_cache_usage_perc"
        pq = "vllm:gpu_prefix_cache_queries" if old else "vllm:prefix_cache_queries"
        ph = "vllm:gpu_prefix_cache_hits" if old else "vllm:prefix_cache_hits"
        out = [
            prom.header(
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
            ),
            prom.sample("vllm:num_requests_running", running, lab),
            prom.header(
                "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."
            ),
            prom.sample("vllm:num_requests_waiting", waiting, lab),
            prom.header(kv_name, "gauge", "KV-cache usage. 1 means 100 percent usage."),
            prom.sample(kv_name, kv_used / kv_blocks if kv_blocks else 0.0, lab),
            prom.header(
                f"{pq}_total",
                "counter",
                "Prefix cache queries, in terms of number of queried tokens.",
            ),
            prom.sample(f"{pq}_total", self.prefix_queries, lab),
            prom.header(
                f"{ph}_total", "counter", "Prefix cache hits, in terms of number of cached tokens."
            ),
            prom.sample(f"{ph}_total", self.prefix_hits, lab),
            prom.header(
                "vllm:num_preemptions_total",
                "counter",
                "Cumulative number of preemption from the engine.",
            ),
            prom.sample("vllm:num_preemptions_total", preemptions, lab),
            prom.header(
                "vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed."
            ),
            prom.sample("vllm:prompt_tokens_total", self.prompt_tokens_total, lab),
            prom.header(
                "vllm:generation_tokens_total", "counter", "Number of generation tokens processed."
            ),
            prom.sample("vllm:generation_tokens_total", self.generation_tokens_total, lab),
            prom.header(
                "vllm:request_success_total", "counter", "Count of successfully processed requests."
            ),
            *(
                prom.sample("vllm:request_success_total", v, {**lab, "finished_reason": k})
                for k, v in self.success.items()
            ),
            prom.header(
                "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig"
            ),
            prom.sample(
                "vllm:cache_config_info",
                1.0,
                {
                    "block_size": str(engine_config.block_size),
                    "enable_prefix_caching": str(engine_config.enable_prefix_caching),
                    "gpu_memory_utilization": str(engine_config.gpu_memory_utilization),
                    "num_gpu_blocks": str(kv_blocks),
                    "engine": "0",
                },
            ),
            prom.header(
                "vllm:time_to_first_token_seconds",
                "histogram",
                "Histogram of time to first token in seconds.",
            ),
            self.ttft.render("vllm:time_to_first_token_seconds", lab),
            prom.header(
                "vllm:e2e_request_latency_seconds",
                "histogram",
                "Histogram of e2e request latency in seconds.",
            ),
            self.e2e.render("vllm:e2e_request_latency_seconds", lab),
        ]
        itl = "vllm:time_per_output_token_seconds" if old else "vllm:inter_token_latency_seconds"
        out += [
            prom.header(itl, "histogram", "Histogram of inter-token latency in seconds."),
            self.itl.render(itl, lab),
        ]
        return "".join(out)
