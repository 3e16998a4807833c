"""The steps of the ``promote`` flow (``flows.prefect_flows.promote``).

The paired held-back comparison as a Prefect task (the decision rule is
``flows.promotion``), the promotion recorded in the registry, the swap into the live
router and the watch after it with its rollback, and the decision as a Prefect
artifact and the numbers of the decision's MLflow run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows import links
from flows.control_state import read_reference, record_event, scenarios_to_replay, windows_dir_of
from flows.control_tracking import log_control_run
from flows.live import AdminClient, WatchConfig, watch
from flows.promotion import HELD_BACK_SEEDS, PromotionConfig, compare
from flows.registry import CHAMPION, PolicyRegistry


def promotion_config(
    state_dir: str,
    scenarios: list[str] | None,
    seeds: list[int] | None,
    windows_dir: str | None,
    *,
    scale: float,
    margin: float,
    tolerance: float,
    backend: str,
) -> PromotionConfig:
    """Where the two are compared: the given held-back scenarios, else the reference
    window's, else (no reference yet) the default ones; the held-back seeds."""
    wdir = windows_dir_of(state_dir, windows_dir)
    if not scenarios and read_reference(state_dir) is None:
        scenarios = list(PromotionConfig().scenarios)
    scenarios = scenarios_to_replay(state_dir, scenarios, wdir, None)
    return PromotionConfig(
        scenarios=tuple(scenarios),
        seeds=tuple(seeds or HELD_BACK_SEEDS),
        scale=scale,
        margin=margin,
        tolerance=tolerance,
        windows_dir=wdir,
        backend=backend,
    )


def first_champion(reg: PolicyRegistry, chal: Any, log: Any) -> dict[str, Any]:
    """Nothing to beat: the first registered policy becomes the champion as it is."""
    reg.set_alias(CHAMPION, chal.version)
    log.info(
        "no champion yet: version %s (%s) becomes the champion as it is", chal.version, chal.name
    )
    return {"promoted": True, "version": chal.version, "reasons": ["no champion yet"]}


@task(name="paired-comparison", cache_policy=NO_CACHE)
def compare_task(
    champion_source: str, challenger_source: str, cfg: PromotionConfig
) -> dict[str, Any]:
    return compare(champion_source, challenger_source, cfg).to_dict()


def log_decision(
    champ: Any, chal: Any, cfg: PromotionConfig, dec: dict[str, Any], log: Any
) -> None:
    log.info(
        "challenger v%s (%s) vs champion v%s (%s) on %s, seeds %s: mean paired gain "
        "%+.4f, 95%% interval [%+.4f, %+.4f]; %s: %s",
        chal.version,
        chal.name,
        champ.version,
        champ.name,
        ", ".join(cfg.scenarios),
        list(cfg.seeds),
        dec["mean_diff"],
        dec["ci_low"],
        dec["ci_high"],
        "PROMOTED" if dec["promote"] else "not promoted",
        "; ".join(dec["reasons"]),
    )


def decision_result(champ: Any, chal: Any, dec: dict[str, Any]) -> dict[str, Any]:
    """The flow's result as the decision leaves it, before any swap."""
    return {
        "champion": champ.version,
        "challenger": chal.version,
        "promoted": dec["promote"],
        "reasons": dec["reasons"],
        "decision": dec,
        "rolled_back": False,
    }


def decision_metrics(dec: dict[str, Any]) -> dict[str, float]:
    """The decision's numbers, and the mean paired gain on each scenario."""
    metrics = {k: v for k, v in dec.items() if isinstance(v, int | float) and v is not None}
    return metrics | {f"diff.{k}": v for k, v in dec["by_scenario"].items()}


def log_decision_run(
    tracking_uri: str | None,
    champ: Any,
    chal: Any,
    cfg: PromotionConfig,
    metrics: dict[str, float],
    out: dict[str, Any],
    verdict: str,
) -> str:
    """The decision's run in the control experiment: its numbers, what was compared
    where, and the flow's result as ``decision.json``."""
    params = {
        "champion_version": champ.version,
        "challenger_version": chal.version,
        "scenarios": ",".join(cfg.scenarios),
        "seeds": ",".join(map(str, cfg.seeds)),
        "margin": str(cfg.margin),
        "tolerance": str(cfg.tolerance),
    }
    return log_control_run(
        tracking_uri,
        f"promote-v{chal.version}",
        "promotion",
        metrics,
        params,
        {"decision.json": json.dumps(out, indent=1, default=str)},
        description=f"{verdict}: {'; '.join(out['reasons'])}",
    )


def crown(reg: PolicyRegistry, chal: Any, champ: Any, state_dir: str, scenarios: list[str]) -> None:
    """The challenger becomes the champion in the registry, its predecessor recorded."""
    reg.set_alias(CHAMPION, chal.version)
    reg.tag(chal.version, "promoted_from", champ.version)
    record_event(
        state_dir, "promoted", version=chal.version, previous=champ.version, scenarios=scenarios
    )


def make_rollback(
    admin: AdminClient, reg: PolicyRegistry, version: str, previous: str, state_dir: str | Path
) -> Any:
    """What a regression during the dwell does: router back, alias back, both recorded."""

    def rollback(after: dict[str, float]) -> None:
        admin.rollback()
        reg.set_alias(CHAMPION, previous)
        reg.tag(version, "rolled_back", json.dumps(after, default=str))
        record_event(state_dir, "rolled_back", version=version, live=after)

    return rollback


def swap_and_watch(
    admin: AdminClient,
    reg: PolicyRegistry,
    version: str,
    previous: str,
    state_dir: str | Path,
    telemetry_dir: str | None,
    watch_cfg: WatchConfig,
) -> dict[str, Any] | None:
    """Load ``version`` into the live router; then, given telemetry, watch it for the
    dwell period and roll back on a regression. The watch's result; None unwatched."""
    swapped_at = time.time()
    admin.load(reg.fetch(version))
    record_event(state_dir, "swapped", version=version)
    if not telemetry_dir:
        return None
    rollback = make_rollback(admin, reg, version, previous, state_dir)
    return watch(telemetry_dir, version, previous, swapped_at, watch_cfg, rollback)


def watch_metrics(w: dict[str, Any]) -> dict[str, float]:
    """The live metrics before and after the swap, and whether it was rolled back."""
    return (
        {f"live_before.{k}": v for k, v in w["before"].items()}
        | {f"live_after.{k}": v for k, v in w["after"].items()}
        | {"rolled_back": float(w["rolled_back"])}
    )


def verdict_of(champ: Any, chal: Any, promoted: bool, rolled_back: bool) -> str:
    verdict = (
        f"v{chal.version} promoted over v{champ.version}"
        if promoted
        else f"v{chal.version} not promoted (v{champ.version} stays champion)"
    )
    if rolled_back:
        verdict += ", then rolled back on a live regression"
    return verdict


def decision_artifact(verdict: str, champ: Any, chal: Any, dec: dict[str, Any]) -> None:
    """The decision as a Prefect markdown artifact on this flow run."""
    links.markdown_artifact(
        "promotion-decision",
        "\n".join(
            [
                f"## {verdict}",
                "",
                links.markdown_table(
                    [
                        ("champion", f"v{champ.version} ({champ.name})"),
                        ("challenger", f"v{chal.version} ({chal.name})"),
                        ("mean paired gain", dec["mean_diff"]),
                        ("95 % interval", f"[{dec['ci_low']:+.4f}, {dec['ci_high']:+.4f}]"),
                        *((f"gain on {k}", v) for k, v in dec["by_scenario"].items()),
                        ("reasons", "; ".join(dec["reasons"])),
                    ]
                ),
            ]
        ),
        "The promotion decision: paired held-back comparison of challenger and champion.",
    )
