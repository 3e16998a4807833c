"""The MLflow model registry as the control plane uses it: versions, aliases, hash-checked sources.

Every version of ``autopoiesis-policy`` is one policy module, an MLflow pyfunc
model logged on the run that produced it (``flows.policy_model``: the source is
its artifact ``data/policy.py``; loading it never runs the policy), with its
sha256 in the version tag ``source_sha256``. Aliases: ``challenger`` (set by evolution),
``champion`` (set by promotion; what the router should run). ``fetch`` refuses a
version whose stored source does not hash to its tag: what the router loads is
exactly what was evaluated.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from flows import links, policy_model
from flows.evolution.tracking import (
    MODEL_DESCRIPTION,
    MODEL_NAME,
    default_tracking_uri,
    ensure_experiment,
)
from sandbox.protocol import sha256_text
from serving.admin import RegistryPolicy

CONTROL_EXPERIMENT = "autopoiesis-control"
CHAMPION, CHALLENGER = "champion", "challenger"


class RegistryError(RuntimeError):
    """A version or alias that is missing, or whose source fails its hash check."""


class PolicyRegistry:
    def __init__(self, tracking_uri: str | None = None, model: str = MODEL_NAME) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.model = model

    # --- experiments / runs ------------------------------------------------------
    def experiment_id(self, name: str = CONTROL_EXPERIMENT) -> str:
        return ensure_experiment(self.client, self.uri, name)

    # --- versions ----------------------------------------------------------------
    def register_source(
        self,
        source: str,
        name: str,
        *,
        alias: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """A new version holding ``source`` (e.g. a baseline made the first champion)."""
        exp = self.experiment_id()
        note = f"Policy {name} registered as it is (not evolved)."
        run = self.client.create_run(
            exp, run_name=f"register-{name}",
            tags={"kind": "registration", **links.run_tags(links.default_source(), note)},
        )
        rid = run.info.run_id
        self.client.log_text(rid, source, "policy/policy.py")
        all_tags = {"source_sha256": sha256_text(source), "policy_name": name, **(tags or {})}
        version = policy_model.register_version(
            self.client, exp, rid, source, name, tags=all_tags, alias=alias,
            description=f"{note}\n\n[registration run]({links.mlflow_run_path(exp, rid)})",
            model=self.model, model_description=MODEL_DESCRIPTION,
        )
        self.client.set_terminated(rid, "FINISHED")
        return version

    def version_of(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model, alias).version)
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model, alias, version)

    def delete_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(self.model, alias)

    def tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model, version, key, value)

    def versions(self) -> list[dict[str, Any]]:
        # search_model_versions leaves aliases out; the registered model maps them.
        by_version: dict[str, list[str]] = {}
        for alias, v in (self.client.get_registered_model(self.model).aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        out = []
        for mv in self.client.search_model_versions(f"name = '{self.model}'"):
            out.append(
                {
                    "version": str(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "tags": dict(mv.tags or {}),
                    "run_id": mv.run_id,
                }
            )
        return sorted(out, key=lambda v: int(v["version"]))

    def fetch(self, version_or_alias: str) -> RegistryPolicy:
        """The stored source of a version (or alias), checked against its sha256 tag."""
        from mlflow.exceptions import MlflowException

        try:
            if version_or_alias.isdigit():
                mv = self.client.get_model_version(self.model, version_or_alias)
            else:
                mv = self.client.get_model_version_by_alias(self.model, version_or_alias)
        except MlflowException as e:
            raise RegistryError(f"{self.model} {version_or_alias}: not found") from e
        try:
            source = policy_model.read_source(mv.source)
        except (policy_model.PolicyModelError, MlflowException, OSError) as e:
            raise RegistryError(f"{self.model} v{mv.version}: source unreadable ({e})") from e
        want = (mv.tags or {}).get("source_sha256", "")
        got = sha256_text(source)
        if got != want:
            raise RegistryError(
                f"{self.model} v{mv.version}: stored source hashes to {got[:12]}, "
                f"tag says {want[:12] or 'nothing'}"
            )
        name = (mv.tags or {}).get("policy_name") or (mv.tags or {}).get("candidate_id") or "policy"
        return RegistryPolicy(source=source, sha256=got, version=str(mv.version), name=name)

    def loader(self):  # -> serving.admin.RegistryLoader
        """For the router's admin API: ``{"registry_version": "champion"}`` loads through here."""
        return self.fetch
