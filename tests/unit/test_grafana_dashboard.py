"""The Grafana dashboard (deploy/grafana) reads only series that exist - exported by the API
or made by the recording rules - in queries Prometheus's own parser accepts, from the
datasource the compose stack provisions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.promql_series import ROOT, known_series, series_in

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "promotions.json"
# Grafana's own variables, as Prometheus would see them once substituted.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


@pytest.fixture(scope="module")
def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query."""
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_series_names_are_found_in_expressions() -> None:
    """The check below can fail: names are told apart from functions, labels, keywords."""
    expr = (
        'sum by (le, job) (rate(foo_bucket{route="/a/{b}",status=~"5.."}[$__rate_interval]))'
        " / on (job) group_left bar:ratio offset 1h > bool 1e6 and baz"
    )
    assert series_in(expr) == {"foo_bucket", "bar:ratio", "baz"}


def test_dashboard_covers_the_service(queries: list[tuple[str, str]]) -> None:
    used = set().union(*(series_in(expr) for _, expr in queries))
    for needed in (
        "promotions_http_requests_total",  # lookups by status
        "promotions:lookup_latency_seconds:p99_5m",
        "promotions_cache_lookups_total",
        "promotions_last_job_phase_duration_seconds",
        "promotions:active_dataset_age_seconds",
        "promotions:shared_volume_free_bytes",
        "promotions:workers_online",
        "promotions:broker_queue_depth",
    ):
        assert needed in used, needed


def test_dashboard_queries_read_only_series_that_exist(queries: list[tuple[str, str]]) -> None:
    known = known_series()
    assert len(queries) >= 20
    for title, expr in queries:
        unknown = series_in(expr) - known
        assert not unknown, f"panel {title!r} reads series nobody exports: {unknown}"


def test_dashboard_queries_parse(queries: list[tuple[str, str]], tmp_path: Path) -> None:
    """Each query as a recording rule: promtool checks it with Prometheus's own parser."""
    rules = []
    for i, (_, expr) in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("no promtool: run `make system-deps` (installs Debian's prometheus)")
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_provisions_the_dashboard_over_its_prometheus(
    dashboard: dict[str, Any],
) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "promotions.yml").read_text()
    )
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    for panel in _panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    assert re.fullmatch(r"[a-z0-9-]+", dashboard["uid"])
