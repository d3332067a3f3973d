"""The alert and recording rules in deploy/prometheus, checked by the real tool: promtool
parses them and runs their unit tests (deploy/prometheus/tests), every alert is covered by a
test that fails when the alert never fires, and every alert says how bad it is and where its
runbook is."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devstack.run import _prometheus_service
from tests.unit.promql_series import ROOT, RULES_DIR, known_series, rule_groups, series_in

TEST_FILE = RULES_DIR / "tests" / "alerts.test.yml"
ALERTS = [r for g in rule_groups("alerts.rules.yml") for r in g["rules"]]


def _promtool(*args: str | Path, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("no promtool: run `make system-deps` (installs Debian's prometheus)")
    return subprocess.run(  # one stream: promtool's report per file is split over both
        [binary, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


def test_promtool_accepts_the_rules_and_the_scrape_config(tmp_path: Path) -> None:
    done = _promtool("check", "rules", "recording.rules.yml", "alerts.rules.yml")
    assert done.returncode == 0, done.stdout
    # promtool checks that the read token's file exists: the container writes it at start.
    config = (RULES_DIR / "prometheus.yml").read_text()
    assert "credentials_file: /prometheus/read-token" in config
    (tmp_path / "read-token").write_text("t")
    for name in ("recording.rules.yml", "alerts.rules.yml"):
        shutil.copy(RULES_DIR / name, tmp_path / name)
    checked = tmp_path / "prometheus.yml"
    checked.write_text(config.replace("/prometheus/read-token", str(tmp_path / "read-token")))
    done = _promtool("check", "config", checked, cwd=tmp_path)
    assert done.returncode == 0, done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", TEST_FILE)
    assert done.returncode == 0, done.stdout
    assert "SUCCESS" in done.stdout


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = _anchors((ROOT / "docs" / "operations.md").read_text())
    assert len(ALERTS) >= 15
    for rule in ALERTS:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/operations.md"


def test_rules_read_only_series_that_exist() -> None:
    known = known_series()
    for name in ("recording.rules.yml", "alerts.rules.yml"):
        for group in rule_groups(name):
            for rule in group["rules"]:
                unknown = series_in(rule["expr"]) - known
                assert not unknown, f"{rule.get('alert') or rule['record']}: {unknown}"


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """For each alert, the unit tests that mention it, run against rules where its
    expression is never true; one promtool run for all (each file in its own directory).
    Returns promtool's report per alert."""
    base = tmp_path_factory.mktemp("broken")
    tests = yaml.safe_load(TEST_FILE.read_text())
    files: dict[str, Path] = {}
    for alert in (r["alert"] for r in ALERTS):
        directory = base / alert
        (directory / "tests").mkdir(parents=True)
        shutil.copy(RULES_DIR / "recording.rules.yml", directory)
        rules = yaml.safe_load((RULES_DIR / "alerts.rules.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == alert:
                    rule["expr"] = "vector(1) == 2"
        (directory / "alerts.rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        mine = [
            case
            for case in tests["tests"]
            if any(t["alertname"] == alert for t in case.get("alert_rule_test", []))
        ]
        files[alert] = directory / "tests" / "alerts.test.yml"
        files[alert].write_text(yaml.safe_dump({**tests, "tests": mine}, sort_keys=False))
    done = _promtool("test", "rules", *files.values(), cwd=base)
    reports = (done.stdout).split("Unit Testing:")[1:]
    by_file = {report.split()[0]: report for report in reports}
    return {alert: by_file.get(str(path), "") for alert, path in files.items()}


@pytest.mark.parametrize("alert", [r["alert"] for r in ALERTS])
def test_each_alert_is_tested_firing(broken_runs: dict[str, str], alert: str) -> None:
    """With this alert's expression made never true, the unit tests must fail on it: every
    alert has a test that expects it to fire."""
    report = broken_runs[alert]
    assert "FAILED" in report, f"no promtool test expects {alert} to fire:\n{report}"
    assert f"alertname: {alert}," in report, report


def test_make_run_prometheus_config_is_valid(tmp_path: Path) -> None:
    """DEVSTACK_PROMETHEUS=true make run: the config it writes loads the repository's rules."""
    service = _prometheus_service(tmp_path)
    config = next(a.split("=", 1)[1] for a in service.argv if a.startswith("--config.file="))
    done = _promtool("check", "config", config)
    assert done.returncode == 0, done.stdout
    assert "alerts.rules.yml" in done.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    assert service.port == 9090


def test_make_run_prometheus_sends_the_read_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a token set, /metrics answers 401 without it: make run's Prometheus sends it from
    a file of its own (never in the config or on the command line)."""
    from shared.settings import get_settings

    monkeypatch.setenv("READ_TOKEN", "a-read-token-of-some-length")
    get_settings.cache_clear()
    try:
        service = _prometheus_service(tmp_path)
    finally:
        get_settings.cache_clear()
    config = next(a.split("=", 1)[1] for a in service.argv if a.startswith("--config.file="))
    [scrape] = yaml.safe_load(Path(config).read_text())["scrape_configs"]
    token_file = Path(scrape["authorization"]["credentials_file"])
    assert token_file.read_text() == "a-read-token-of-some-length"
    assert token_file.stat().st_mode & 0o077 == 0
    assert "a-read-token" not in Path(config).read_text() + " ".join(service.argv)
    assert _promtool("check", "config", config).returncode == 0
