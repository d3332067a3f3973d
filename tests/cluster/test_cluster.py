"""The stack on several hosts (network namespaces, see ``cluster.py``), and hosts lost.

Every scenario loads a file over the one loaded before it and checks, exactly: the job's
counts, ``GET /datasets/active`` on both API hosts, every row of the new version in the
store, sampled lookups on both API hosts, and - from lookups running on both API hosts all
through the load - that the previous dataset is served until the switch and only the new
one from 1 s after it.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.generate import generate
from shared.dataset import lifecycle
from tests.cluster.cluster import API_HOSTS, Cluster, node_name, wait_until
from tests.cluster.netns import netns_pids
from tests.helpers import expected_rows, wait_job

pytestmark = pytest.mark.slow

Rows = dict[str, tuple[str, float, str]]
W1, W2 = node_name("w1"), node_name("w2")


@dataclass
class Loaded:
    version: int
    path: Path
    rows: Rows


# --- files ------------------------------------------------------------------------------


def next_file(path: Path, lines: int, seed: int, previous: Rows | None) -> Rows:
    """A partner file with some duplicate ids; 200 of the previous file's ids come back with
    other prices, spread over the file (so lookups tell old from new)."""
    generate(lines, path, seed=seed, duplicate_ratio=0.02)
    if previous:
        text = path.read_text().splitlines()
        for i, key in enumerate(list(previous)[:200]):
            row_id, _, date = previous[key]
            text[i * (lines // 200)] = f"{row_id},{1000 + i}.5,{date}"
        path.write_text("\n".join(text) + "\n")
    return expected_rows(path)


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def upload(c: Cluster, api: str, path: Path) -> str:
    with path.open("rb") as f:
        r = c.api[api].post("/add-promotions/", files={"file": (path.name, f, "text/csv")})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def live(c: Cluster, tmp_path: Path) -> Loaded:
    """What is serving now; the first scenario to run loads it through the drop folder
    (beat on the data host schedules the scan, a worker host claims the file)."""
    if c.history:
        return c.history[-1]  # type: ignore[no-any-return]
    path = tmp_path / "first.csv"
    rows = next_file(path, 3_000, seed=1, previous=None)
    inbox = c.shared / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "first.csv.tmp").write_bytes(path.read_bytes())
    (inbox / "first.csv.tmp").rename(inbox / "first.csv")  # the partner convention
    job = wait_until(lambda: _finished_inbox_job(c), 60)
    assert job["status"] == "succeeded", job
    check_loaded(c, job, path, rows)
    return c.history[-1]  # type: ignore[no-any-return]


def _finished_inbox_job(c: Cluster) -> dict[str, Any] | None:
    for job in c.api["api1"].get("/jobs").json():
        if job["source"] == "inbox" and job["status"] in lifecycle.FINISHED:
            return c.api["api1"].get(f"/jobs/{job['job_id']}").json()  # type: ignore[no-any-return]
    return None


# --- checks -----------------------------------------------------------------------------


def check_loaded(c: Cluster, job: dict[str, Any], path: Path, want: Rows) -> None:
    """Exact counts, the pointer on both API hosts, every stored row, sampled lookups."""
    lines = line_count(path)
    assert job["status"] == "succeeded" and not job["superseded"], job
    assert job["rows_loaded"] == lines and job["rows_rejected"] == 0, job
    assert job["duplicates"] == lines - len(want), job
    assert job["chunks_total"] > 1 and job["chunks_done"] == job["chunks_total"], job
    version = job["dataset_version"]
    for api in API_HOSTS:
        active = c.api[api].get("/datasets/active").json()
        assert (active["version"], active["rows"], active["job_id"]) == (
            version,
            len(want),
            job["job_id"],
        ), (api, active)
    assert c.collection(version) == want  # no row lost, none extra, last one per id wins
    sample = random.Random(version).sample(sorted(want), 100)
    for api in API_HOSTS:
        for key in sample:
            row_id, price, date = want[key]
            r = c.api[api].get(f"/promotions/{key.upper()}")
            assert r.json() == {"id": row_id, "price": price, "expiration_date": date}, (api, key)
    if c.history:
        gone = [k for k in c.history[-1].rows if k not in want][:20]
        for api in API_HOSTS:
            for key in gone:
                assert c.api[api].get(f"/promotions/{key}").status_code == 404, (api, key)
    c.history.append(Loaded(version, path, want))


def _body(rows: Rows, key: str) -> dict[str, Any] | None:
    if key not in rows:
        return None
    row_id, price, date = rows[key]
    return {"id": row_id, "price": price, "expiration_date": date}


@dataclass
class Answer:
    api: str
    key: str
    started: float
    finished: float
    status: int
    body: Any


class Lookups:
    """Clients on the client host looking ids up on every API host, until stopped. The ids
    are in the old file only, the new one only, or both with other values: every answer
    says which dataset served it."""

    def __init__(self, c: Cluster, old: Rows, new: Rows) -> None:
        both = [k for k in old if k in new and old[k] != new[k]]
        self.keys = both[:30] + [k for k in old if k not in new][:15]
        self.keys += [k for k in new if k not in old][:15]
        self.old, self.new = old, new
        self.urls = {api: str(c.api[api].base_url) for api in API_HOSTS}
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(api,), daemon=True) for api in API_HOSTS
        ]

    def __enter__(self) -> Lookups:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, api: str) -> None:
        rng = random.Random(api)
        with httpx.Client(base_url=self.urls[api], timeout=10) as client:
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                started = time.time()
                try:
                    r = client.get(f"/promotions/{key}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{api}: {exc!r}")
                    continue
                body = r.json() if r.status_code == 200 else None
                self.answers.append(Answer(api, key, started, time.time(), r.status_code, body))
                time.sleep(0.01)

    def check_switch(self, activated_at: float) -> None:
        """Old until the switch, new from 1 s after it, on every API host."""
        assert not self.errors, self.errors[:5]
        before = dict.fromkeys(API_HOSTS, 0)
        after = dict.fromkeys(API_HOSTS, 0)
        for a in self.answers:
            old, new = _body(self.old, a.key), _body(self.new, a.key)
            assert a.status in (200, 404), a
            assert a.body in (old, new), a
            if a.finished < activated_at:
                before[a.api] += 1
                assert a.body == old, ("new data before the switch", a, activated_at)
            if a.started > activated_at + 1.0:
                after[a.api] += 1
                assert a.body == new, ("old data 1 s after the switch", a, activated_at)
        for api in API_HOSTS:  # both bounds were really put to the test on both hosts
            assert before[api] >= 10 and after[api] >= 20, (before, after)

    def wait_answers(self, since: float, answers: int = 20) -> None:
        """Until every API host has answered ``answers`` lookups started after ``since``
        (a host without its cache answers slower)."""

        def enough() -> bool:
            late = [a.api for a in list(self.answers) if a.started > since]
            return all(late.count(api) >= answers for api in API_HOSTS)

        wait_until(enough, 30)

    def run_past(self, activated_at: float) -> None:
        """Keep looking up well past the 1 s bound on every host."""
        self.wait_answers(activated_at + 1.0)


def activated_at(c: Cluster) -> float:
    when = c.api["api1"].get("/datasets/active").json()["activated_at"]
    return datetime.fromisoformat(when).timestamp()


def settle(c: Cluster, job: dict[str, Any]) -> None:
    """Nothing stuck in the broker, no chunk results left, the job record unchanged."""
    wait_until(c.broker_idle, 60)
    assert c.db["job_chunks"].count_documents({"job_id": job["job_id"]}) == 0
    assert c.api["api1"].get(f"/jobs/{job['job_id']}").json() == job


def strike_mid_load(
    c: Cluster, job_id: str, node: str, strike: Any, undo: Any
) -> tuple[set[int], float]:
    """Strike ``node``'s host while it loads a chunk of the job, after some chunks are done.
    Returns the chunks it held (taken from the broker, never acknowledged) and when. If it
    happened to finish all it had just before the strike, there is nothing to redeliver:
    undo and strike again - so the load must outlast a host's restart (~3 s): with 40k rows
    the other host once finished the whole job meanwhile, and no second strike could land."""
    assert c.events is not None
    events = c.events
    for _ in range(3):
        wait_until(
            lambda: (
                events.in_flight(job_id, node) and len(events.chunks(job_id, "task-succeeded")) >= 2
            ),
            60,
        )
        strike()
        at = time.time()
        time.sleep(0.3)  # its events already on the way
        held = events.held(job_id, node)
        if held:
            return held, at
        undo()
    raise AssertionError(f"{node} never held a chunk when struck")


def assert_both_hosts_loaded(c: Cluster, job: dict[str, Any]) -> dict[str, set[int]]:
    job_id = job["job_id"]
    by_node = {node: c.events.chunks(job_id, "task-succeeded", node) for node in (W1, W2)}  # type: ignore[union-attr]
    assert by_node[W1] and by_node[W2], by_node
    assert by_node[W1] | by_node[W2] == set(range(job["chunks_total"])), by_node
    return by_node


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path


# --- scenarios --------------------------------------------------------------------------


def test_one_upload_is_loaded_by_both_worker_hosts(on_client: Cluster, files: Path) -> None:
    c = on_client
    old = live(c, files)
    path = files / "s1.csv"
    new = next_file(path, 30_000, seed=11, previous=old.rows)
    with Lookups(c, old.rows, new) as lookups:
        job = wait_job(c.api["api2"], upload(c, "api1", path), timeout=120)
        switch = activated_at(c)
        lookups.run_past(switch)
    check_loaded(c, job, path, new)
    lookups.check_switch(switch)
    by_node = assert_both_hosts_loaded(c, job)
    print(f"chunks per worker host: { {n: len(s) for n, s in by_node.items()} }")
    settle(c, job)


def test_a_worker_host_cut_off_mid_load(on_client: Cluster, files: Path) -> None:
    """w1's switch port goes down while it loads: the broker hands its unacknowledged chunks
    to w2 once the visibility timeout has passed; when w1 is back, its stalled work counts
    nothing twice."""
    c = on_client
    assert c.events is not None
    events = c.events
    old = live(c, files)
    path = files / "s2.csv"
    new = next_file(path, 100_000, seed=21, previous=old.rows)
    w1 = c.host("w1")
    with Lookups(c, old.rows, new) as lookups:
        job_id = upload(c, "api1", path)
        try:
            held, cut = strike_mid_load(
                c,
                job_id,
                W1,
                strike=lambda: c.net.set_link(w1, up=False),
                undo=lambda: c.net.set_link(w1, up=True),
            )
            # Redelivered: a chunk w1 never acknowledged starts on w2.
            wait_until(lambda: held & events.chunks(job_id, "task-started", W2, after=cut), 90)
            redelivered_after = time.time() - cut
        finally:
            c.net.set_link(w1, up=True)
        back = time.time()
        job = wait_job(c.api["api2"], job_id, timeout=120)
        switch = activated_at(c)
        lookups.run_past(switch)
    check_loaded(c, job, path, new)
    lookups.check_switch(switch)
    print(f"w1 held chunks {sorted(held)}; redelivered to w2 after {redelivered_after:.1f} s")
    # w1 is back on the network and settles what it was doing when cut off.
    wait_until(lambda: events.heartbeat_at(W1) > back, 120)
    wait_until(lambda: not events.held(job_id, W1) or events.holding(job_id, W1) == set(), 120)
    settle(c, job)
    assert c.collection(job["dataset_version"]) == new


def test_a_worker_host_killed_whole_mid_load(on_client: Cluster, files: Path) -> None:
    """Every process of w2 is SIGKILLed at once, as when the machine dies: its chunks come
    back from the broker to w1; a replacement w2 then joins and takes work."""
    c = on_client
    assert c.events is not None
    events = c.events
    old = live(c, files)
    path = files / "s3.csv"
    new = next_file(path, 100_000, seed=31, previous=old.rows)
    w2 = c.host("w2")
    killed: list[int] = []
    with Lookups(c, old.rows, new) as lookups:
        job_id = upload(c, "api1", path)
        held, killed_at = strike_mid_load(
            c,
            job_id,
            W2,
            strike=lambda: killed.extend(c.net.kill_host(w2)),
            undo=lambda: c.start_worker("w2"),
        )
        assert len(killed) >= 3, killed  # the main process and its 2 pool processes
        wait_until(lambda: not netns_pids(w2.netns), 10)
        wait_until(lambda: held & events.chunks(job_id, "task-started", W1, after=killed_at), 90)
        redelivered_after = time.time() - killed_at
        job = wait_job(c.api["api2"], job_id, timeout=120)
        switch = activated_at(c)
        lookups.run_past(switch)
    check_loaded(c, job, path, new)
    lookups.check_switch(switch)
    print(f"w2 held chunks {sorted(held)}; redelivered to w1 after {redelivered_after:.1f} s")
    settle(c, job)
    c.start_worker("w2")  # the replacement host, same name


def test_two_api_hosts_switch_within_1s_and_one_loses_the_cache(
    on_client: Cluster, files: Path
) -> None:
    c = on_client
    old = live(c, files)
    api2, cache = c.host("api2"), c.host("cache")
    c.net.partition(api2, cache)
    try:
        wait_until(lambda: _readyz(c, "api2")["status"] == "degraded", 20)
        assert _readyz(c, "api2")["checks"]["cache"].startswith("unavailable")
        assert _readyz(c, "api1")["status"] == "ready"  # only api2 lost the cache
        # api2 answers from the store, and takes an upload; the switch reaches it by
        # polling the pointer (its pub/sub channel is on the cache host).
        for key in random.Random(4).sample(sorted(old.rows), 30):
            assert c.api["api2"].get(f"/promotions/{key}").json() == _body(old.rows, key)
        assert c.api["api2"].get("/promotions/not-there").status_code == 404
        path = files / "s4.csv"
        new = next_file(path, 20_000, seed=41, previous=old.rows)
        with Lookups(c, old.rows, new) as lookups:
            job = wait_job(c.api["api2"], upload(c, "api2", path), timeout=120)
            switch = activated_at(c)
            lookups.run_past(switch)
        check_loaded(c, job, path, new)
        lookups.check_switch(switch)
        assert _metric(c, "api2", "promotions_cache_errors_total") >= 1
        assert_both_hosts_loaded(c, job)  # w2 is a replacement host if the kill test ran
    finally:
        c.net.heal(api2, cache)
    wait_until(lambda: _readyz(c, "api2")["status"] == "ready", 20)
    time.sleep(1.2)  # the cache's cool-down after its last error
    # Redis is asked again: an id never asked before misses there (no error this time).
    errors = _metric(c, "api2", "promotions_cache_errors_total")
    misses = _metric(c, "api2", 'promotions_cache_lookups_total{result="miss"}')
    assert c.api["api2"].get("/promotions/never-asked-after-heal").status_code == 404
    assert _metric(c, "api2", 'promotions_cache_lookups_total{result="miss"}') == misses + 1
    assert _metric(c, "api2", "promotions_cache_errors_total") == errors
    # And a second ask is answered by the process's own cache.
    key = next(iter(new))
    c.api["api2"].get(f"/promotions/{key}")
    hits = _metric(c, "api2", 'promotions_cache_lookups_total{result="local_hit"}')
    assert c.api["api2"].get(f"/promotions/{key}").json() == _body(new, key)
    assert _metric(c, "api2", 'promotions_cache_lookups_total{result="local_hit"}') == hits + 1

    # A rollback is a switch too: both API hosts serve it within 1 s, and back again.
    latest = c.history[-1]
    for was, target in ((latest, old), (old, latest)):
        with Lookups(c, was.rows, target.rows) as lookups:
            lookups.wait_answers(time.time(), answers=10)  # the current version, on both
            r = c.api["api1"].post(f"/datasets/{target.version}/activate")
            assert r.status_code == 200, r.text
            switch = datetime.fromisoformat(r.json()["activated_at"]).timestamp()
            lookups.run_past(switch)
        lookups.check_switch(switch)


def _readyz(c: Cluster, api: str) -> dict[str, Any]:
    body: dict[str, Any] = c.api[api].get("/readyz").json()
    return body


def _metric(c: Cluster, api: str, series: str) -> float:
    text = c.api[api].get("/metrics").text
    m = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert m, f"{series} not in /metrics of {api}"
    return float(m.group(1))
