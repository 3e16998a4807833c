"""The router's admin API: read, load, swap and roll back the routing policy.

Served on its own listener (loopback by default) so the public port never
exposes it, and every call needs ``Authorization: Bearer <token>``.

* ``GET  /admin/policy``   -> current version, name, sha256, loaded_at; previous.
* ``POST /admin/policy``   -> load and swap. Body: ``{"source": ..., "sha256": ...,
  "version"?: ..., "name"?: ..., "params"?: {...}}`` -- the source's sha256 must
  equal the one given, so what runs is exactly what was promoted -- or
  ``{"registry_version": ...}`` resolved by a pluggable ``registry`` callable
  (the MLflow-backed one comes with the control plane; without it: 501).
* ``POST /admin/rollback`` -> the previous policy becomes current again.

Loading (compile, import, contract checks) happens before the swap; the swap
itself is one assignment in the event loop, so requests already routed finish
under the version they started with.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from serving.policy_loader import PolicyError, load_policy
from serving.policy_runtime import ActivePolicy, PolicyRuntime


@dataclass(frozen=True)
class RegistryPolicy:
    source: str
    sha256: str
    version: str
    name: str = "policy"


RegistryLoader = Callable[[str], RegistryPolicy]
"""Resolves a registry version (e.g. an MLflow model version or alias) to a policy."""


class AdminAPI:
    def __init__(
        self,
        runtime: PolicyRuntime,
        token: str,
        *,
        registry: RegistryLoader | None = None,
        on_swap: Callable[[float], None] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the admin API needs a non-empty bearer token")
        self.runtime = runtime
        self._token = token.encode()
        self.registry = registry
        self.on_swap = on_swap
        """Called with each load-and-swap's duration in milliseconds (router metrics)."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=8 * 1024 * 1024)
        app.router.add_get("/admin/policy", self._get)
        app.router.add_post("/admin/policy", self._load)
        app.router.add_post("/admin/rollback", self._rollback)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        # Constant-time compare: the token is the only thing guarding policy loads.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._token):
            return _err(401, "missing or wrong bearer token")
        return await handler(request)

    @staticmethod
    def _describe(a: ActivePolicy | None) -> dict | None:
        if a is None:
            return None
        return {"version": a.version, "name": a.policy.name, "sha256": a.sha256,
                "loaded_at": a.loaded_at, "params": dict(a.policy.params)}

    async def _get(self, _: web.Request) -> web.Response:
        rt = self.runtime
        return web.json_response({"current": self._describe(rt.current),
                                  "previous": self._describe(rt.previous),
                                  "swaps": rt.swaps, "rollbacks": rt.rollbacks,
                                  "fallbacks": rt.fallbacks})

    async def _load(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            return _err(400, "body must be JSON")
        if not isinstance(body, dict):
            return _err(400, "body must be a JSON object")
        if "registry_version" in body:
            if self.registry is None:
                return _err(501, "no policy registry configured on this router")
            try:
                entry = self.registry(str(body["registry_version"]))
            except Exception as e:
                return _err(404, f"registry: {e}")
            source, sha, version, name = entry.source, entry.sha256, entry.version, entry.name
        else:
            source, sha = body.get("source"), body.get("sha256")
            version, name = body.get("version"), body.get("name", "policy")
            if not isinstance(source, str) or not isinstance(sha, str):
                return _err(400, "give 'source' and its 'sha256' (or 'registry_version')")
        actual = hashlib.sha256(source.encode("utf-8")).hexdigest()
        if not hmac.compare_digest(actual, sha.lower()):
            return _err(409, f"sha256 mismatch: the source hashes to {actual}")
        try:
            policy = load_policy(source, name=str(name), params=body.get("params"))
        except PolicyError as e:
            return _err(422, str(e))
        active = self.runtime.swap(policy, str(version) if version else None)
        ms = (time.perf_counter() - t0) * 1000
        if self.on_swap is not None:
            self.on_swap(ms)
        return web.json_response({"current": self._describe(active), "swap_ms": ms})

    async def _rollback(self, _: web.Request) -> web.Response:
        try:
            active = self.runtime.rollback()
        except LookupError as e:
            return _err(409, str(e))
        return web.json_response({"current": self._describe(active)})


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)
