"""Parallel, cached evaluation of candidate policies in a sandbox backend.

    with Evaluator("auto", max_parallel=2) as ev:
        resp = ev.evaluate(source, ["sandbox-tiny"], seeds=[0, 1])
        many = ev.evaluate_many([req1, req2, req3])

Up to ``max_parallel`` sandboxes run at once (a thread pool over backend calls:
the work happens in the sandboxes, the threads only wait). An evaluation is
identified by its reproducibility key (source sha256, scenario set, seeds,
params, mode; ``EvalRequest.key``); results that the same key must reproduce
(successes and the candidate's own faults) are cached, while outcomes that
depend on the machine (deadline, internal errors) are not.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from sandbox.backends import Backend, choose_backend
from sandbox.protocol import EvalRequest, EvalResponse, Limits

_CACHEABLE_STAGES = {None, "static", "load", "runtime", "integrity"}


class Evaluator:
    def __init__(
        self,
        backend: Backend | str = "auto",
        *,
        max_parallel: int = 2,
        cache: bool = True,
        limits: Limits | None = None,
        **backend_kwargs,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.backend = (
            choose_backend(backend, **backend_kwargs) if isinstance(backend, str) else backend
        )
        self._owns_backend = isinstance(backend, str)
        self.max_parallel = max_parallel
        self.limits = limits or Limits()
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="sandbox-eval")
        self._cache: dict[str, EvalResponse] | None = {} if cache else None
        self._lock = threading.Lock()
        self.stats = {"evaluations": 0, "cache_hits": 0}

    def request(
        self,
        source: str,
        scenarios: Sequence[str],
        *,
        seeds: Sequence[int] = (0,),
        params: Mapping[str, float] | None = None,
        name: str = "policy",
        mode: str = "fast",
        scale: float = 1.0,
        limits: Limits | None = None,
        static_checks: bool = True,
    ) -> EvalRequest:
        return EvalRequest.build(
            source,
            scenarios,
            seeds=seeds,
            limits=limits or self.limits,
            name=name,
            params=params,
            mode=mode,
            scale=scale,
            static_checks=static_checks,
        )

    def submit(self, req: EvalRequest) -> Future[EvalResponse]:
        cached = self._cached(req)
        if cached is not None:
            f: Future[EvalResponse] = Future()
            f.set_result(cached)
            return f
        return self._pool.submit(self._run, req)

    def evaluate(self, source: str, scenarios: Sequence[str], **kw) -> EvalResponse:
        return self.submit(self.request(source, scenarios, **kw)).result()

    def evaluate_many(self, requests: Sequence[EvalRequest]) -> list[EvalResponse]:
        """Evaluate all, at most ``max_parallel`` at a time; results in request order."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def _cached(self, req: EvalRequest) -> EvalResponse | None:
        if self._cache is None or not req.static_checks:
            return None
        with self._lock:
            hit = self._cache.get(req.key)
            if hit is not None:
                self.stats["cache_hits"] += 1
        return hit

    def _run(self, req: EvalRequest) -> EvalResponse:
        resp = self.backend.evaluate(req)
        with self._lock:
            self.stats["evaluations"] += 1
            if self._cache is not None and req.static_checks and resp.stage in _CACHEABLE_STAGES:
                self._cache[req.key] = resp
        return resp

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
