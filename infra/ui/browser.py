"""The UI check in headless Chromium: pages render what the APIs promise; screenshots."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from uiapi import CheckFailed, expect, say, wait_for

ML_VIEW = "workflowType=machine_learning"
"""MLflow 3.17's UI opens experiments on its GenAI overview unless told otherwise."""


def browser(work: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,900",
        f"--user-data-dir={work / 'chromium'}",
    ):
        opts.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(options=opts, service=Service(driver_path))


class Browser:
    """Headless Chromium with what the checks need: where to write, what failed."""

    def __init__(self, work: Path, shots: Path | None) -> None:
        self.driver = browser(work)
        self.work, self.shots = work, shots
        self.failures: list[str] = []

    def text(self) -> str:
        return str(
            self.driver.execute_script("return document.body ? document.body.innerText : ''")
        )

    def page(self, url: str, texts: list[str], what: str, timeout_s: float = 60) -> str:
        """Open ``url`` and wait until every one of ``texts`` is on the page; its text.

        A page that never shows them is recorded (its text saved beside the check's
        logs) and the checks go on, so one run names every page that is wrong.
        """
        self.driver.get(url)
        try:
            body = wait_for(
                what,
                lambda: b if all(t in (b := self.text()) for t in texts) else None,
                timeout_s,
                1.0,
            )
        except CheckFailed:
            body = self.text()
            name = "".join(c if c.isalnum() else "-" for c in what.lower())
            (self.work / f"page-{name}.txt").write_text(f"{url}\n\n{body}")
            missing = [t for t in texts if t not in body]
            self.failures.append(f"{what}: {url} never showed {missing} (page-{name}.txt)")
            say(f"FAIL {what}: missing {missing}")
            return body
        expect(True, what)
        time.sleep(1.5)  # charts and fonts finish drawing
        return body

    def shoot(self, name: str) -> None:
        if self.shots is None:
            return
        from PIL import Image

        self.shots.mkdir(parents=True, exist_ok=True)
        # MLflow 3.17 opens its assistant panel over a third of the page: close it first.
        self.driver.execute_script("""
            for (const b of document.querySelectorAll('button[aria-label]')) {
              const r = b.getBoundingClientRect();
              if (/close/i.test(b.getAttribute('aria-label')) && r.left > innerWidth * 0.8
                  && r.top < 80) { b.click(); }
            }""")
        time.sleep(1.0)
        raw = self.work / f"{name}.raw.png"
        self.driver.save_screenshot(str(raw))
        # A 256-colour palette keeps a UI screenshot legible at a fraction of the size.
        out = self.shots / f"{name}.png"
        Image.open(raw).convert("RGB").quantize(256).save(out, optimize=True)
        say(f"screenshot {out}")


# Long for a reason: one checked page after another, in the order a reader walks the UI.
def check_browser(
    urls: dict[str, str],
    evolve_dep: dict[str, Any],
    evolve_fr: dict[str, Any],
    exp_id: str,
    evo_run: str,
    candidates: list[str],
    version: str,
    work: Path,
    shots: Path | None,
) -> None:
    from flows.deploy import SPECS, WORK_POOL
    from flows.evolution.tracking import MODEL_NAME

    br = Browser(work, shots)
    try:
        p, m = urls["prefect"], urls["mlflow"]
        dep = f"{p}/deployments/deployment/{evolve_dep['id']}"
        br.page(dep, ["gpu", WORK_POOL, "control-plane"], "Prefect deployment page")
        br.page(
            f"{dep}?tab=Description",
            [SPECS["evolve"].description],
            "Prefect deployment description",
        )
        br.page(
            f"{dep}/run",
            ["Generations after the seed policies.", "Sandbox of the evaluations"],
            "Prefect custom run form documents each parameter",
        )
        br.shoot("prefect-deployment")
        br.page(
            f"{p}/runs/flow-run/{evolve_fr['id']}",
            [evolve_fr["name"], "Completed"],
            "Prefect evolve flow-run page",
        )
        br.page(
            f"{p}/artifacts",
            ["evolution-summary", "promotion-decision", "mlflow-run"],
            "Prefect artifacts page lists the runs' summaries and links",
        )
        br.page(f"{p}/work-pools", [WORK_POOL], "Prefect work pools page")
        # MLflow 3.17's UI opens experiments on its GenAI overview unless told otherwise
        # (the experiment kind tag counts only where its workflow switch is off).
        br.page(
            f"{m}/#/experiments/{exp_id}?{ML_VIEW}",
            ["cli-evolve", "Run Name"],
            "MLflow experiment opens on its runs",
        )
        br.shoot("mlflow-runs")
        ids = json.dumps(candidates[:6]).replace(" ", "")
        br.page(
            f'{m}/#/compare-runs?runs={ids}&experiments=["{exp_id}"]&{ML_VIEW}',
            ["objective", "Parallel Coordinates Plot"],
            "MLflow compare view",
            90,
        )
        br.shoot("mlflow-compare")
        br.page(
            f"{m}/#/models/{MODEL_NAME}/versions/{version}",
            ["evolution run", "candidate run", "Schema"],
            "MLflow model version page",
        )
        br.shoot("mlflow-model-version")
        br.page(
            f"{m}/#/experiments/{exp_id}/runs/{evo_run}",
            ["prefect.flow_run_url"],
            "MLflow evolution run page shows the Prefect link",
        )
    finally:
        br.driver.quit()
    if br.failures:
        raise CheckFailed("pages not as expected:\n  " + "\n  ".join(br.failures))
