"""The Grafana dashboard in the repo queries only metrics /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from orchestrator import metrics
from orchestrator.models import PoolStatus, RouterOverview

DASHBOARD = Path(__file__).resolve().parents[2] / "deployments" / "grafana" / "orchestrator.json"


def exported_names() -> set[str]:
    totals = {"worker_type:reasoning|succeeded": 1, "worker_type:reasoning|run:3": 1, "tool:echo|tokens": 2,
              "provider:deepseek|limited": 1}
    overview = RouterOverview(pools=[PoolStatus(worker_type="reasoning", workers=1, slots=2, running=0, queued=0)],
                              workers=[], matrix={}, running=[])
    text = metrics.render(metrics.families(totals, overview, {"active_tasks": 0}, {"deepseek": "closed"})).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        used = set(re.findall(r"\borchestrator_[a-z_]+", expr))
        assert used and used <= names, (expr, used - names)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
