"""A local Prometheus over the stack: ``make run`` with DEVSTACK_PROMETHEUS=true and the
end-to-end alert test start it the same way, with the repository's rule files
(deploy/prometheus) and a scrape configuration written for this machine's ports."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.services import ROOT

RULES_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = ("recording.rules.yml", "alerts.rules.yml")
# The alert rules name this scrape job (PromotionsApiDown).
API_JOB = "promotions-api"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def write_config(
    directory: Path,
    api_targets: Sequence[str],
    scrape_interval: str = "15s",
    evaluation_interval: str = "30s",
    rule_files: Sequence[Path] | None = None,
    token: str | None = None,
) -> Path:
    """``prometheus.yml`` in ``directory``, scraping the API at ``api_targets``
    (host:port) with the repository's rules unless others are given; ``token``: /metrics
    needs the read (or write) token, kept in a file of its own, never in the config."""
    directory.mkdir(parents=True, exist_ok=True)
    scrape: dict[str, Any] = {
        "job_name": API_JOB,
        "metrics_path": "/metrics",
        "static_configs": [{"targets": list(api_targets)}],
    }
    if token is not None:
        token_file = directory / "read-token"
        token_file.touch(mode=0o600)
        token_file.write_text(token)
        scrape["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(p) for p in (rule_files or [RULES_DIR / f for f in RULE_FILES])],
        "scrape_configs": [scrape],
    }
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: no YAML writer needed
    return path


def prometheus_command(
    binary: str, config: Path, port: int, data_dir: Path, host: str = "127.0.0.1"
) -> list[str]:
    """Lifecycle API on: tests and operators can reload the rules without a restart."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
