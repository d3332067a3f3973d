"""Which series a PromQL expression reads, and which series exist: what the API exports
(read from its own collectors, so the list cannot drift from the code) and what the
recording rules make."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from prometheus_client import REGISTRY, Metric

import api.metrics  # noqa: F401  (registers the API's counters and histograms)
from api.metrics import ScrapeTimeCollector
from api.ops_metrics import OpsCollector, OpsState
from shared.dataset.datasets import ActiveDataset
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
# Made by Prometheus itself, or exported by a part of the API built apart from this one:
# the store circuit breaker's gauge (1 open or half-open, 0 closed).
EXTERNAL = {"up", "promotions_store_breaker_open"}
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "Inf",
    "NaN",
}


def series_in(expr: str) -> set[str]:
    """Metric names in ``expr`` (not functions, labels, keywords, durations or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def _sample_names(metric: Metric) -> set[str]:
    kinds = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
        "summary": ["_sum", "_count", ""],
    }
    return {metric.name + suffix for suffix in kinds.get(metric.type, [""])}


def exported_series() -> set[str]:
    """Every series name the API's /metrics can hold, every optional source present."""
    settings = Settings()
    state = OpsState(
        store_up=True,
        cache_up=True,
        broker_up=True,
        last_job={
            "status": "succeeded",
            "created_at": datetime(2026, 1, 1, tzinfo=UTC),
            "phase_at": {"loading": datetime(2026, 1, 1, 0, 1, tzinfo=UTC)},
            "finished_at": datetime(2026, 1, 1, 0, 2, tzinfo=UTC),
            "rows_loaded": 10,
            "rows_rejected": 1,
        },
        progress_age_s=0,
        queue_depth=0,
        unacked=0,
        workers_online=1,
        volume=(1, 2),
    )
    watcher: Any = SimpleNamespace(
        current=ActiveDataset(1, 10, "job", datetime(2026, 1, 1, tzinfo=UTC))
    )
    reader: Any = SimpleNamespace(state=state)
    job_counts: Any = SimpleNamespace(counts={"failed": 1})
    names: set[str] = set()
    for collector in (
        REGISTRY,
        OpsCollector(reader, watcher, settings),
        ScrapeTimeCollector(watcher, job_counts),
    ):
        for metric in collector.collect():
            names |= _sample_names(metric)
    return names


def rule_groups(name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((RULES_DIR / name).read_text())["groups"]
    return groups


def recorded_series() -> set[str]:
    return {r["record"] for g in rule_groups("recording.rules.yml") for r in g["rules"]}


def known_series() -> set[str]:
    return exported_series() | recorded_series() | EXTERNAL
