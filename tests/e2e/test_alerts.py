"""The alert rules on a real Prometheus scraping a running stack: a job that fails and
workers that stop show up as firing alerts in Prometheus's HTTP API.

The stack here is its own (database, Redis databases, shared volume, worker, API), so
stopping its worker touches no other test. The rules are the repository's, with every group
evaluated each second and every ``for`` set to 0 s: the expressions are what is tested here
(their durations are tested by promtool, tests/unit/test_prometheus_rules.py).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
import yaml

from devstack.prometheus import RULE_FILES, RULES_DIR, prometheus_command, write_config
from devstack.services import Service, api_command, free_port, worker_command
from shared.settings import Settings
from tests.helpers import wait_for

DATE = "2018-08-04 05:32:31 +0200 CEST"


def _fast_rules(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in RULE_FILES:
        rules = yaml.safe_load((RULES_DIR / name).read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "0s"
        path = directory / name
        path.write_text(yaml.safe_dump(rules, sort_keys=False))
        out.append(path)
    return out


class Stack:
    def __init__(self, api: str, prometheus: str, worker: Service) -> None:
        self.api = httpx.Client(base_url=api, timeout=10)
        self.prometheus = httpx.Client(base_url=prometheus, timeout=5)
        self.worker = worker

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.prometheus.get("/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def firing(self) -> dict[str, dict[str, Any]]:
        body = self.prometheus.get("/api/v1/alerts").json()
        return {
            a["labels"]["alertname"]: a for a in body["data"]["alerts"] if a["state"] == "firing"
        }


@pytest.fixture
def stack(services: None, settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.fail("no prometheus server: run `make system-deps` (installs Debian's prometheus)")
    redis_base = settings.redis_url.get_secret_value().rsplit("/", 1)[0]
    env = {
        "MONGO_DB": f"alerts_{uuid.uuid4().hex[:8]}",
        "REDIS_URL": f"{redis_base}/6",
        "BROKER_URL": f"{redis_base}/7",
        "DATA_DIR": str(tmp_path / "shared"),
        "WORKER_HEARTBEAT_S": "0.5",
        "OPS_METRICS_TTL_S": "0",
    }
    logs = tmp_path / "logs"
    started: list[Service] = []
    try:
        name = f"alerts-{uuid.uuid4().hex[:6]}"
        worker = Service(
            "worker", worker_command(1, name), env=env, log_path=logs / "worker.log"
        ).start()
        started.append(worker)
        api_port = free_port()
        api = Service(
            "api",
            api_command("127.0.0.1", api_port),
            env=env,
            port=api_port,
            log_path=logs / "api.log",
        )
        started.append(api.start().wait_ready(60))
        prom_port = free_port()
        config = write_config(
            tmp_path / "prometheus",
            [f"127.0.0.1:{api_port}"],
            scrape_interval="1s",
            evaluation_interval="1s",
            rule_files=_fast_rules(tmp_path / "rules"),
        )
        prometheus = Service(
            "prometheus",
            prometheus_command(prometheus_bin, config, prom_port, tmp_path / "tsdb"),
            port=prom_port,
            log_path=logs / "prometheus.log",
        )
        started.append(prometheus.start().wait_ready(30))
        stack = Stack(f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{prom_port}", worker)
        wait_for(lambda: stack.prometheus.get("/-/ready").status_code == 200, 30)
        yield stack
    finally:
        for svc in reversed(started):
            svc.stop()
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            settings.mongo_url.get_secret_value(), serverSelectionTimeoutMS=5000
        )
        client.drop_database(env["MONGO_DB"])
        client.close()


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def test_a_failed_job_and_stopped_workers_fire_their_alerts(stack: Stack) -> None:
    # The worker's heartbeat reaches Prometheus through the API's scrape.
    wait_for(lambda: _value(stack.query("promotions:workers_online")) == 1, 60, 0.2)
    wait_for(lambda: _value(stack.query("promotions_store_up")) == 1, 10, 0.2)
    firing = stack.firing()
    assert "PromotionsNoWorkerOnline" not in firing and "PromotionsJobFailed" not in firing

    # 5 % invalid rows: over the 1 % limit, so the job fails.
    lines = [
        f"id{i},{'-' if i % 20 == 0 else ''}1.5,{DATE}" for i in range(2000)
    ]  # fmt: skip
    r = stack.api.post(
        "/add-promotions/", files={"file": ("p.csv", ("\n".join(lines) + "\n").encode())}
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_for(
        lambda: (j := stack.api.get(f"/jobs/{job_id}").json())["status"] == "failed" and j, 60
    )
    assert "are invalid" in job["error"], job

    stack.worker.stop()

    wanted = {"PromotionsJobFailed", "PromotionsNoWorkerOnline", "PromotionsRejectsRatioHigh"}
    firing = wait_for(lambda: (f := stack.firing()).keys() >= wanted and f, 30, 0.25)
    assert firing["PromotionsJobFailed"]["labels"]["severity"] == "warning"
    assert firing["PromotionsNoWorkerOnline"]["labels"]["severity"] == "critical"
    assert "5%" in firing["PromotionsRejectsRatioHigh"]["annotations"]["summary"]
    # Healthy parts stay quiet.
    for name in ("PromotionsStoreUnreachable", "PromotionsCacheUnreachable", "PromotionsApiDown"):
        assert name not in firing, firing[name]
