"""Model-based test of the dataset lifecycle against the real dev store.

Hypothesis interleaves, in any order: uploads starting (some whose plan task never reaches
the broker, as a drop-folder claim whose enqueue failed), plans, chunk deliveries
(duplicates and redeliveries included), finalizers that run to the end or die after any of
their steps, cleanup from a fresh or a stale snapshot, rollbacks, the watchdog and the clock
moving on. After every step it checks the invariants of ``shared.dataset.lifecycle``. With the fix
of issue #9's defect 1, 2 or 3 reverted, it finds a counterexample (see the commit message).

The clock is the test's own (lifecycle times are compared with it), so grace periods and
stall timeouts are exact, and nothing here sleeps.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from shared.dataset import datasets, job_records, lifecycle
from shared.settings import Settings
from tests.helpers import StateReset, stored_rows
from worker import job_steps, upkeep
from worker.finalizing import finalize_steps

GRACE_S = 50
STALL_S = 100
KEEP = 1
FINALIZER_STEPS = ["checked", "counted", "claimed", "ready", "switched", "announced"]
IDS = ["a", "B", "c", "d"]
MOSTLY = st.sampled_from([True, True, True, False])


START = datetime(2026, 1, 1, tzinfo=UTC)


def reachable(table: tuple[lifecycle.Transition[Any], ...]) -> set[tuple[Any, Any]]:
    """Every (from, to) the table allows in one or more transitions (None: no record yet);
    a rule may make several (an upload that loads and finalizes at once)."""
    closure = {(source, row.target) for row in table for source in row.sources or (None,)}
    while True:
        more = {(a, d) for a, b in closure for c, d in closure if b == c} - closure
        if not more:
            return closure
        closure |= more


# What each table allows, and the state a record is in before it is seen first (the
# pointer's view of a version that has just appeared: neither named nor barred).
ALLOWED = (
    (reachable(lifecycle.JOB_TRANSITIONS), None),
    (reachable(lifecycle.VERSION_TRANSITIONS), None),
    (reachable(lifecycle.POINTER_TRANSITIONS), "unnamed"),
)


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


class Lifecycle(RuleBasedStateMachine):
    db: Any
    settings: Settings
    clock: Clock
    redis: Any
    reset_state: StateReset

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, list[str]] = {}  # job -> lines
        self.chunks: dict[str, list[tuple[int, int, int]]] = {}
        self.partitions: dict[str, list[int]] = {}
        self.sent: set[str] = set()
        self.stale: upkeep.CleanupPlan | None = None
        self.last_named: dict[int, datetime] = {}
        self.collections: set[int] = set()
        self.seen: list[dict[Any, str]] = [{}, {}, {}]  # jobs, versions, pointer roles

    @initialize()
    def empty_store(self) -> None:
        self.reset_state(self.db, self.redis, self.settings)
        self.clock.at = START

    # --- rules ---------------------------------------------------------------------

    @rule(
        target=jobs,
        rows=st.lists(
            st.tuples(st.sampled_from(IDS), st.integers(1, 9), MOSTLY),
            min_size=1,
            max_size=6,
        ),
        sent=MOSTLY,
        steps=st.sampled_from(["none", "load", "finish", "finish", "die", "die, then silence"]),
        # Dying after the claim, the version marked ready or the switch leaves the most to
        # clear up: drawn more often.
        die_after=st.sampled_from([*FINALIZER_STEPS, "claimed", "ready", "ready", "switched"]),
    )
    def upload(
        self, rows: list[tuple[str, int, bool]], sent: bool, steps: str, die_after: str
    ) -> Any:
        """A new upload; most are sent, and loaded or finished at once (each step can also
        come later, on its own, interleaved with anything else)."""
        version = datasets.allocate_version_sync(self.db)
        job_id = f"job{version}"
        lines = [
            f"{rid},{price},2018-08-04 05:32:31 +0200" if valid else f"{rid},-{price},x"
            for rid, price, valid in rows
        ]
        (self.settings.uploads_dir / f"{job_id}.csv").write_text(
            "".join(f"{line}\n" for line in lines)
        )
        self.db[lifecycle.JOBS].insert_one(
            job_records.new_job(job_id, version, f"{job_id}.csv", 10, "inbox")
        )
        self.files[job_id] = lines
        if sent:  # otherwise: the claim's enqueue failed
            job_records.mark_enqueued_sync(self.db, job_id)
            self.sent.add(job_id)
            if steps != "none":
                self.load_everything(job_id, redeliver=False)
            if steps not in ("none", "load"):
                self.finalize(job_id, None if steps == "finish" else die_after)
            if steps == "die, then silence":  # the watchdog finds the dead finalizer's job
                self.watchdog(after_silence=True)
        return job_id

    def plan(self, job: str) -> None:
        if job not in self.sent:
            return  # no task was ever sent for it
        found: list[tuple[int, int, int]] = []
        job_steps.plan(self.db, self.settings, job, lambda *c: found.append(c))
        if found:
            self.chunks[job] = found

    @rule(job=jobs, redeliver=st.booleans())
    def load_everything(self, job: str, redeliver: bool) -> None:
        """Plan and every chunk in one step (each may also happen on its own)."""
        self.plan(job)
        chunks = self.chunks.get(job, [])
        for chunk in chunks + chunks[:1] if redeliver else chunks[::-1]:
            self.map_chunk(job, chunk)
        partitions = self.partitions.get(job, [])
        for partition in partitions + partitions[-1:] if redeliver else partitions[::-1]:
            job_steps.write_partition(self.db, self.settings, job, partition)

    def map_chunk(self, job: str, chunk: tuple[int, int, int]) -> None:
        if job_steps.load(self.db, self.settings, job, *chunk) == "last":
            found: list[int] = []
            job_steps.after_loading(self.db, self.settings, job, found.append)
            if found:
                self.partitions[job] = found

    @precondition(lambda self: bool(self.chunks))
    @rule(job=jobs, pick=st.integers(0, 20))
    def deliver_chunk(self, job: str, pick: int) -> None:
        chunks = self.chunks.get(job)
        if chunks:
            self.map_chunk(job, chunks[pick % len(chunks)])

    @precondition(lambda self: bool(self.partitions))
    @rule(job=jobs, pick=st.integers(0, 20))
    def deliver_partition(self, job: str, pick: int) -> None:
        partitions = self.partitions.get(job)
        if partitions:
            job_steps.write_partition(
                self.db, self.settings, job, partitions[pick % len(partitions)]
            )

    @rule(
        job=jobs,
        stop_after=st.one_of(st.none(), st.none(), st.sampled_from(FINALIZER_STEPS)),
    )
    def finalize(self, job: str, stop_after: str | None) -> None:
        for step in finalize_steps(self.db, self.settings, job, lambda v: None):
            if step == stop_after:
                return  # the finalizer dies here

    @rule(job=jobs)
    def rollback(self, job: str) -> None:
        version = int(job.removeprefix("job"))
        with contextlib.suppress(lifecycle.ActivationRefused):
            lifecycle.activate_by_hand(self.db, version)

    @rule()
    def read_for_cleanup(self) -> None:
        self.stale = upkeep.plan_cleanup(self.db, KEEP, GRACE_S, self.clock())

    @precondition(lambda self: self.stale is not None)
    @rule()
    def cleanup_from_stale_read(self) -> None:
        assert self.stale is not None
        upkeep.apply_cleanup(self.db, self.stale, GRACE_S)
        self.stale = None

    @rule(job=jobs, racing=st.sampled_from(["rollback", "finalize"]), pick=st.integers(0, 9))
    def cleanup_racing(self, job: str, racing: str, pick: int) -> None:
        """Cleanup reads, then a switch lands - a rollback to a version that cleanup is about
        to retire, or a job's switch - then cleanup acts on what it read. (The split rules
        above make the same races, less often.)"""
        stale = upkeep.plan_cleanup(self.db, KEEP, GRACE_S, self.clock())
        if racing == "rollback" and stale.retire:
            self.rollback(f"job{stale.retire[pick % len(stale.retire)]}")
        elif racing == "finalize":
            self.finalize(job, None)
        upkeep.apply_cleanup(self.db, stale, GRACE_S)

    @rule()
    def cleanup(self) -> None:
        plan = upkeep.plan_cleanup(self.db, KEEP, GRACE_S, self.clock())
        upkeep.apply_cleanup(self.db, plan, GRACE_S)
        self._check_keep_policy()

    @rule(after_silence=st.booleans())
    def watchdog(self, after_silence: bool) -> None:
        """The periodic task: lost plans sent again, stalled jobs ended, stale files swept;
        now, or after a silence longer than the stall timeout."""
        if after_silence:
            self.clock.at += timedelta(seconds=STALL_S + 1)
        upkeep.watchdog(self.db, self.settings, self.clock(), self.sent.add)
        upkeep.sweep_uploads(self.db, self.settings.uploads_dir, self.clock().timestamp() + 1)

    @rule(seconds=st.sampled_from([1, 30, 60, 150]))
    def tick(self, seconds: int) -> None:
        self.clock.at += timedelta(seconds=seconds)

    # --- invariants ------------------------------------------------------------------

    def _records(self) -> dict[int, lifecycle.VersionRecord]:
        return {r.version: r for r in lifecycle.read_records(self.db)}

    def _existing(self) -> set[int]:
        names = lifecycle.version_collections(self.db)
        return {int(n.removeprefix(datasets.COLLECTION_PREFIX)) for n in names}

    @invariant()
    def every_change_of_state_is_one_the_tables_allow(self) -> None:
        """Jobs, versions and the pointer's view of each version move only along the rows
        of shared.dataset.lifecycle's tables (a barred version, say, is never named again)."""
        jobs = {j["_id"]: j["status"] for j in self.db[lifecycle.JOBS].find({}, {"status": 1})}
        versions: dict[Any, str] = {v: r.state for v, r in self._records().items()}
        pointer = lifecycle.read_pointer(self.db)
        roles: dict[Any, str] = {v: lifecycle.pointer_role(pointer, v) for v in versions}
        now_seen = [jobs, versions, roles]
        for (allowed, first), before, after in zip(ALLOWED, self.seen, now_seen, strict=True):
            for key, state in after.items():
                was = before.get(key, first)
                assert state == was or (was, state) in allowed, (key, was, state)
        self.seen = now_seen

    @invariant()
    def pointer_names_a_ready_version_whose_collection_exists(self) -> None:
        pointer = lifecycle.read_pointer(self.db)
        if pointer.version is None:
            return
        record = self._records().get(pointer.version)
        assert record is not None and record.state == lifecycle.READY, record
        assert pointer.version in self._existing()

    @invariant()
    def a_collection_goes_only_when_no_pointer_value_of_the_grace_period_named_it(self) -> None:
        pointer = lifecycle.read_pointer(self.db)
        now = self.clock()
        if pointer.version is not None:
            self.last_named[pointer.version] = now
        existing = self._existing()
        for version in self.collections - existing:
            named = self.last_named.get(version)
            assert named is None or now - named >= timedelta(seconds=GRACE_S), (version, named)
        self.collections = existing

    @invariant()
    def an_accepted_file_stays_while_its_job_can_run_and_is_never_given_up_unsent(self) -> None:
        for job in self.db[lifecycle.JOBS].find({}):
            if job["status"] in lifecycle.UNFINISHED:
                assert (self.settings.uploads_dir / job["file"]).exists(), job["_id"]
            if job["status"] == lifecycle.FAILED and "no progress" in (job["error"] or ""):
                never_planned = job.get("chunks_total") is None
                assert not never_planned or job["plan_attempts"] >= self.settings.plan_attempts, job

    @invariant()
    def a_succeeded_job_holds_exactly_its_distinct_valid_rows(self) -> None:
        existing = self._existing()
        for job in self.db[lifecycle.JOBS].find({"status": lifecycle.SUCCEEDED}):
            version = job["version"]
            valid = [line for line in self.files[job["_id"]] if ",-" not in line]
            distinct = {line.split(",")[0].lower() for line in valid}
            assert job["rows_loaded"] == len(valid)
            assert job["duplicates"] == len(valid) - len(distinct)
            if version in existing:  # the last row of each id, as written
                last = {line.split(",")[0].lower(): line.split(",") for line in valid}
                want = {k: (rid, float(price), date) for k, (rid, price, date) in last.items()}
                assert stored_rows(self.db, version) == want, job["_id"]

    def _check_keep_policy(self) -> None:
        """Right after a cleanup from a fresh read: the active version and the newest
        ``KEEP - 1`` other settled versions are ready, no other settled one is."""
        pointer = lifecycle.read_pointer(self.db)
        records = self._records()
        ready = {v for v, r in records.items() if r.state == lifecycle.READY}
        settled = sorted((v for v in ready if v <= pointer.high_water), reverse=True)
        others = [v for v in settled if v != pointer.version]
        assert len(others) <= KEEP - (1 if pointer.version is not None else 0), records

    @invariant()
    def a_ready_version_newer_than_every_switch_is_one_being_finalized(self) -> None:
        """Else it would never be settled, so never retired: kept forever. (A held one is
        kept on purpose, until it is activated or a newer version goes live.)"""
        high_water = lifecycle.read_pointer(self.db).high_water
        finalizing = {
            j["version"]
            for j in self.db[lifecycle.JOBS].find(
                {"status": {"$in": [lifecycle.FINALIZING, lifecycle.HELD]}}
            )
        }
        for record in lifecycle.read_records(self.db):
            if record.state == lifecycle.READY and record.version > high_water:
                assert record.version in finalizing, record


@pytest.mark.slow
def test_lifecycle_model(
    mongo_db: Any,
    redis_client: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    reset_state: StateReset,
) -> None:
    """On a database and a shared volume of its own: the session's Celery worker still runs
    delayed clean-ups of earlier tests, which must not act on the model's versions (the
    model's clock is far ahead of theirs) nor sweep its run files."""
    model_db = mongo_db.client[f"{mongo_db.name}_model"]
    clock = Clock()
    for module in (lifecycle, job_records):
        monkeypatch.setattr(module, "now", clock)
    model_settings = settings.model_copy(
        update={
            "chunk_size_bytes": 40,
            "insert_batch_rows": 2,
            "rows_per_bucket": 1,
            "min_partitions": 3,
            "shuffle_slices": 8,
            "reject_ratio": 0.5,
            "data_dir": tmp_path / "shared",
            "job_stall_timeout_s": STALL_S,
            "drop_grace_s": GRACE_S,
            "versions_to_keep": KEEP,
            "plan_attempts": 2,
        }
    )

    class Machine(Lifecycle):
        def __init__(self) -> None:
            # Set before the base class looks at the machine's attributes (a Database
            # answers any attribute name with a collection).
            self.db = model_db
            self.redis = redis_client
            self.settings = model_settings
            self.clock = clock
            self.reset_state = reset_state
            super().__init__()

    run_state_machine_as_test(
        Machine,
        settings=settings_for_ci(),
    )


def settings_for_ci() -> settings:
    """80 examples in CI (about 30 s here); LIFECYCLE_MODEL_EXAMPLES searches deeper."""
    return settings(
        max_examples=int(os.environ.get("LIFECYCLE_MODEL_EXAMPLES", "80")),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
