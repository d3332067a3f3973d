"""The dataset lifecycle against the real store: the races reported in issue #9, each
replayed step by step, and the rules every transition keeps."""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient, monitoring

from shared.dataset import datasets, job_records, lifecycle
from shared.errors import PermanentError
from shared.infra.timeutil import now
from shared.settings import Settings
from tests.helpers import load_dataset, stored_rows
from tests.integration.staged_jobs import mapped_job, stored_job
from worker import job_steps, shuffle_files, upkeep
from worker.finalizing import finalize_steps

pytestmark = pytest.mark.usefixtures("clean_state")

ROW = "a,1,2018-08-04 05:32:31 +0200"


def _exists(db: Any, version: int) -> bool:
    return datasets.collection_name(version) in db.list_collection_names()


def _cleanup(db: Any, keep: int, grace_s: float) -> upkeep.CleanupPlan:
    return upkeep.plan_cleanup(db, keep, grace_s, now())


def _job(db: Any, settings: Settings, job_id: str, version: int, lines: list[str]) -> None:
    """A job whose file is stored and whose chunks all loaded: ready to finalize."""
    partitions = mapped_job(db, settings, job_id, version, lines)
    written = [job_steps.write_partition(db, settings, job_id, p) for p in partitions]
    assert written[-1] == "last"


def _finalize(db: Any, settings: Settings, job_id: str, stop_after: str | None = None) -> None:
    for step in finalize_steps(db, settings, job_id, lambda v: None):
        if step == stop_after:
            return  # the finalizer dies here


def test_older_submission_never_replaces_newer_and_rollback_is_explicit(mongo_db: Any) -> None:
    assert load_dataset(mongo_db, 3, [ROW])
    assert not load_dataset(mongo_db, 2, [ROW])  # finished later, submitted earlier
    assert lifecycle.activate_by_hand(mongo_db, 2).version == 2  # manual rollback
    assert not load_dataset(mongo_db, 1, [ROW])  # still older than the high-water mark
    assert load_dataset(mongo_db, 4, [ROW])
    with pytest.raises(lifecycle.ActivationRefused, match="does not exist"):
        lifecycle.activate_by_hand(mongo_db, 99)


def test_a_repeated_switch_by_a_redelivered_finalizer_is_not_superseded(mongo_db: Any) -> None:
    assert load_dataset(mongo_db, 5, [ROW])
    assert lifecycle.activate_if_newest(mongo_db, 5, 1, "fixture") == "already"
    assert lifecycle.activate_if_newest(mongo_db, 4, 1, "older") == "superseded"


def test_defect_1_a_rollback_racing_cleanup_keeps_its_version_live_and_ready(
    mongo_db: Any,
) -> None:
    """Cleanup reads the pointer (v3), an operator rolls back to v1, cleanup goes on with its
    stale reading: v1 must stay ready, and its collection must survive the next switch."""
    for version in (1, 2, 3):
        load_dataset(mongo_db, version, [ROW])
    stale = _cleanup(mongo_db, keep=1, grace_s=60)
    assert stale.retire == [2, 1]
    lifecycle.activate_by_hand(mongo_db, 1)
    upkeep.apply_cleanup(mongo_db, stale, grace_s=60)
    assert lifecycle.read_record(mongo_db, 1).state == lifecycle.READY  # type: ignore[union-attr]
    assert lifecycle.activate_by_hand(mongo_db, 1).version == 1  # still offered

    # The next switch: v1 was live a moment ago, so its collection outlives the grace period
    # whatever its record says.
    assert load_dataset(mongo_db, 4, [ROW])
    lifecycle.retire_version(mongo_db, 1)
    mongo_db[datasets.META_COLLECTION].update_one(
        {"_id": datasets.version_doc_id(1)}, {"$set": {"retired_at": now() - timedelta(days=1)}}
    )
    upkeep.apply_cleanup(mongo_db, _cleanup(mongo_db, keep=1, grace_s=60), grace_s=60)
    assert _exists(mongo_db, 1)
    assert not lifecycle.remove_version(mongo_db, 1, grace_s=60)


def test_defect_1_a_brand_new_live_version_is_not_retired_by_a_cleanup_read_before_it(
    mongo_db: Any,
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    lifecycle.register_version(mongo_db, 2, "job2")
    mongo_db[datasets.collection_name(2)].insert_one({"_id": "a", "price": 1.0})
    assert lifecycle.mark_ready(mongo_db, 2, 1)
    stale = _cleanup(mongo_db, keep=1, grace_s=0)  # pointer still on v1
    assert lifecycle.activate_if_newest(mongo_db, 2, 1, "job2") == "switched"
    upkeep.apply_cleanup(mongo_db, stale, grace_s=0)
    assert lifecycle.read_record(mongo_db, 2).state == lifecycle.READY  # type: ignore[union-attr]
    assert _exists(mongo_db, 2)


def test_a_failed_version_goes_after_the_grace_period_and_a_late_finalizer_cannot_revive_it(
    mongo_db: Any,
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    lifecycle.register_version(mongo_db, 4, "job4")
    mongo_db.create_collection(datasets.collection_name(4))
    assert lifecycle.fail_version(mongo_db, 4)
    assert not lifecycle.mark_ready(mongo_db, 4, 1)
    assert _cleanup(mongo_db, keep=2, grace_s=60).remove == []
    assert _cleanup(mongo_db, keep=2, grace_s=0).remove == [4]
    upkeep.apply_cleanup(mongo_db, _cleanup(mongo_db, keep=2, grace_s=0), grace_s=0)
    assert not _exists(mongo_db, 4)
    assert lifecycle.read_record(mongo_db, 4).state == lifecycle.REMOVED  # type: ignore[union-attr]


def test_defect_2_a_drop_folder_job_whose_enqueue_failed_is_sent_again_not_deleted(
    mongo_db: Any, settings: Settings
) -> None:
    from kombu.exceptions import OperationalError

    import worker.inbox as inbox

    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    dropped = settings.inbox_dir / "partner.csv"
    dropped.write_text(f"{ROW}\n")
    sent: list[str] = []

    def broker_down(job_id: str) -> None:
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    original = inbox.send_plan
    inbox.send_plan = broker_down  # type: ignore[assignment]
    try:
        job_id = inbox.ingest_file(mongo_db, dropped)
    finally:
        inbox.send_plan = original
    assert job_id is not None
    job = mongo_db[lifecycle.JOBS].find_one({"_id": job_id})
    assert job["status"] == lifecycle.QUEUED and job["enqueued_at"] is None
    stored = settings.uploads_dir / job["file"]
    assert stored.exists()

    later = now() + timedelta(seconds=settings.job_stall_timeout_s + 60)
    assert upkeep.watchdog(mongo_db, settings, later, sent.append) == []
    assert sent == [job_id]  # sent again, not failed
    job = mongo_db[lifecycle.JOBS].find_one({"_id": job_id})
    assert job["status"] == lifecycle.QUEUED and job["plan_attempts"] == 2
    upkeep.sweep_uploads(mongo_db, settings.uploads_dir, later.timestamp())
    assert stored.exists()  # the partner's only copy stays while the job can run


def test_defect_3_a_finalizer_dying_after_the_switch_leaves_a_version_the_keep_policy_drops(
    mongo_db: Any, settings: Settings
) -> None:
    _job(mongo_db, settings, "j1", 1, [ROW, ROW])
    _finalize(mongo_db, settings, "j1", stop_after="switched")
    later = now() + timedelta(seconds=settings.job_stall_timeout_s + 60)
    assert upkeep.watchdog(mongo_db, settings, later, lambda j: None) == ["j1"]
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "j1"})
    assert job["status"] == lifecycle.SUCCEEDED and job["dataset_version"] == 1
    assert (job["rows_loaded"], job["duplicates"]) == (2, 1)  # recorded when claimed
    load_dataset(mongo_db, 2, [ROW])
    load_dataset(mongo_db, 3, [ROW])
    assert _cleanup(mongo_db, keep=2, grace_s=60).retire == [1]


def test_defect_3_a_finalizer_dying_before_the_switch_fails_its_ready_version_for_good(
    mongo_db: Any, settings: Settings
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    _job(mongo_db, settings, "j2", 2, [ROW])
    steps = finalize_steps(mongo_db, settings, "j2", lambda v: None)
    assert [next(steps) for _ in range(4)][-1] == "ready"  # stalls here (not dead)
    later = now() + timedelta(seconds=settings.job_stall_timeout_s + 60)
    assert upkeep.watchdog(mongo_db, settings, later, lambda j: None) == ["j2"]
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "j2"})
    assert job["status"] == lifecycle.FAILED and "never went live" in job["error"]
    assert lifecycle.read_record(mongo_db, 2).state == lifecycle.FAILED_VERSION  # type: ignore[union-attr]
    list(steps)  # the stalled finalizer wakes up: it cannot switch to a failed version
    assert datasets.read_active_sync(mongo_db).version == 1  # type: ignore[union-attr]


def test_only_the_finalizer_or_the_watchdog_ends_a_claimed_job(
    mongo_db: Any, settings: Settings
) -> None:
    _job(mongo_db, settings, "j3", 1, [ROW])
    _finalize(mongo_db, settings, "j3", stop_after="claimed")
    assert not lifecycle.fail_job(mongo_db, "j3", "a redelivered chunk failed")
    assert mongo_db[lifecycle.JOBS].find_one({"_id": "j3"})["status"] == lifecycle.FINALIZING
    _finalize(mongo_db, settings, "j3")  # redelivered finalizer completes the job
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "j3"})
    assert job["status"] == lifecycle.SUCCEEDED and not job["superseded"]


def test_redelivered_maps_and_partitions_count_once_and_store_the_last_rows(
    mongo_db: Any, settings: Settings
) -> None:
    """The shuffle under redelivery: every map and every partition delivered twice (late
    acks), the second partition delivery finding its buckets inserted. Counts come from the
    partitions (no scan of the store) and are exact."""
    lines = [f"id{i % 700},{i}.5,2018-08-04 05:32:31" for i in range(1000)] + ["bad"]
    (settings.uploads_dir / "r.csv").write_text("".join(f"{x}\n" for x in lines))
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("r", 7, "r.csv", 10, "upload"))
    small = settings.model_copy(update={"chunk_size_bytes": 4_000, "rows_per_bucket": 20})
    chunks: list[tuple[int, int, int]] = []
    job_steps.plan(mongo_db, small, "r", lambda *c: chunks.append(c))
    assert len(chunks) > 3
    for chunk in chunks + chunks:
        job_steps.load(mongo_db, small, "r", *chunk)
    partitions: list[int] = []
    job_steps.after_loading(mongo_db, small, "r", partitions.append)
    assert small.min_partitions <= len(partitions) <= 2 * small.min_partitions
    outcomes = [job_steps.write_partition(mongo_db, small, "r", p) for p in partitions]
    assert outcomes[-1] == "last"
    again = [job_steps.write_partition(mongo_db, small, "r", p) for p in partitions]
    assert again == ["last"] * len(partitions)  # repeat-safe; the finalizer is sent again
    _finalize(mongo_db, small, "r")
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "r"})
    assert job["status"] == lifecycle.SUCCEEDED, job.get("error")
    assert (job["rows_loaded"], job["rows_rejected"], job["duplicates"]) == (1000, 1, 300)
    assert job["partitions_done"] == len(partitions)
    want = {f"id{i % 700}": (f"id{i % 700}", i + 0.5) for i in range(1000)}
    assert {k: v[:2] for k, v in stored_rows(mongo_db, 7).items()} == want
    assert datasets.get_version(mongo_db, 7)["rows"] == 700  # type: ignore[index]
    assert (
        datasets.read_buckets_sync(mongo_db, 7)
        == mongo_db[lifecycle.JOBS].find_one({"_id": "r"})["buckets"]
    )


def test_a_load_whose_run_files_cannot_fit_fails_at_its_plan_and_the_live_data_stays(
    mongo_db: Any, settings: Settings
) -> None:
    """Run files take ~1.8x the file on the shared volume: a load that cannot have them
    stops before any chunk runs, saying so, and the live dataset keeps serving."""
    assert load_dataset(mongo_db, 1, [ROW])
    lines = [f"id{i},1,2018-08-04 05:32:31 +0200" for i in range(200)]
    (settings.uploads_dir / "s.csv").write_text("".join(f"{x}\n" for x in lines))
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("s", 2, "s.csv", 10, "upload"))
    free = shutil.disk_usage(settings.data_dir).free
    full = settings.model_copy(update={"min_free_bytes": free})  # the run files eat into it
    chunks: list[tuple[int, int, int]] = []
    assert job_steps.plan(mongo_db, full, "s", lambda *c: chunks.append(c))
    assert chunks == []
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "s"})
    assert job["status"] == lifecycle.FAILED
    assert job["error"].startswith("not enough free space on the shared volume")
    assert datasets.read_active_sync(mongo_db).version == 1  # type: ignore[union-attr]
    assert not list((settings.runs_dir / "s").glob("*"))


def test_two_loads_that_each_fit_alone_do_not_both_start_on_a_volume_for_one(
    mongo_db: Any, settings: Settings
) -> None:
    """An upload arriving while another loads: the second plan counts the run files the
    first is still to write, and stops at once instead of both failing half-way."""
    assert load_dataset(mongo_db, 1, [ROW])
    text = "".join(f"id{i},1,2018-08-04 05:32:31 +0200\n" for i in range(20_000))
    for version, job_id in ((2, "first"), (3, "second")):
        (settings.uploads_dir / f"{job_id}.csv").write_text(text)
        mongo_db[lifecycle.JOBS].insert_one(
            job_records.new_job(job_id, version, f"{job_id}.csv", len(text), "upload")
        )
    needed = shuffle_files.space_needed(len(text), len(text) / 20_000)  # ~2 MB
    free = shutil.disk_usage(settings.data_dir).free
    one_and_a_half = settings.model_copy(  # no report: its bound would be most of the need
        update={"min_free_bytes": free - needed * 3 // 2, "reject_report_max_lines": 0}
    )
    chunks: list[tuple[int, int, int]] = []
    assert not job_steps.plan(mongo_db, one_and_a_half, "first", lambda *c: chunks.append(c))
    assert chunks
    assert job_steps.plan(mongo_db, one_and_a_half, "second", lambda *c: chunks.append(c))
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "second"})
    assert job["status"] == lifecycle.FAILED
    assert "other loads under way still need 2 MiB" in job["error"], job["error"]
    assert mongo_db[lifecycle.JOBS].find_one({"_id": "first"})["status"] == lifecycle.RUNNING
    assert datasets.read_active_sync(mongo_db).version == 1  # type: ignore[union-attr]


def test_a_redelivered_plan_does_not_check_room_again_for_a_job_already_loading(
    mongo_db: Any, settings: Settings
) -> None:
    """Its first delivery found room and its chunks may have written their run files: the
    free space left is no reason to fail it now."""
    lines = [f"id{i},1,2018-08-04 05:32:31 +0200" for i in range(200)]
    (settings.uploads_dir / "r.csv").write_text("".join(f"{x}\n" for x in lines))
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("r", 2, "r.csv", 10, "upload"))
    first: list[tuple[int, int, int]] = []
    assert not job_steps.plan(mongo_db, settings, "r", lambda *c: first.append(c))
    for chunk in first:
        assert job_steps.load(mongo_db, settings, "r", *chunk) in ("loaded", "last")
    free = shutil.disk_usage(settings.data_dir).free
    now_tight = settings.model_copy(update={"min_free_bytes": free})
    assert not job_steps.plan(mongo_db, now_tight, "r", lambda *c: None)
    assert mongo_db[lifecycle.JOBS].find_one({"_id": "r"})["status"] == lifecycle.RUNNING


def test_a_redelivered_plan_under_other_settings_enqueues_the_recorded_plan(
    mongo_db: Any, settings: Settings, tmp_path: Path
) -> None:
    lines = [f"id{i},1,2018-08-04 05:32:31 +0200" for i in range(2000)]
    (settings.uploads_dir / "p.csv").write_text("".join(f"{x}\n" for x in lines))
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("p", 1, "p.csv", 10, "upload"))
    first: list[tuple[int, int, int]] = []
    small = settings.model_copy(update={"chunk_size_bytes": 5_000})
    job_steps.plan(mongo_db, small, "p", lambda *c: first.append(c))
    again: list[tuple[int, int, int]] = []
    other = settings.model_copy(update={"chunk_size_bytes": 7_000})
    job_steps.plan(mongo_db, other, "p", lambda *c: again.append(c))
    assert again == first and len(first) > 1


def _ten_rows_live_with_the_guard_at_half(
    db: Any, settings: Settings
) -> tuple[Settings, list[str]]:
    guarded = settings.model_copy(update={"min_rows_ratio": 0.5})
    rows = [f"id{i},1,2018-08-04 05:32:31 +0200" for i in range(10)]
    _job(db, guarded, "full", 1, rows)
    _finalize(db, guarded, "full")
    return guarded, rows


def test_shrink_guard_holds_a_much_smaller_file_until_an_operator_activates_it(
    mongo_db: Any, settings: Settings
) -> None:
    guarded, rows = _ten_rows_live_with_the_guard_at_half(mongo_db, settings)
    _job(mongo_db, guarded, "truncated", 2, rows[:4])  # 40 % of the rows serving now
    _finalize(mongo_db, guarded, "truncated")
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "truncated"})
    assert job["status"] == lifecycle.HELD
    assert "4 rows, 40.0% of the 10 rows" in job["error"] and "/datasets/2/activate" in job["error"]
    assert datasets.read_active_sync(mongo_db).version == 1  # type: ignore[union-attr]
    assert lifecycle.read_record(mongo_db, 2).state == lifecycle.READY  # type: ignore[union-attr]
    assert _cleanup(mongo_db, keep=1, grace_s=0).retire == []  # kept while held

    lifecycle.activate_by_hand(mongo_db, 2)  # the operator agrees
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "truncated"})
    assert job["status"] == lifecycle.SUCCEEDED and job["dataset_version"] == 2


def test_a_held_version_passed_by_a_newer_upload_does_not_push_out_the_last_live_one(
    mongo_db: Any, settings: Settings
) -> None:
    """v2 held (truncated), then v3 goes live: with two versions kept, the rollback target
    is v1, which served, not the truncated v2 that never did."""
    guarded, rows = _ten_rows_live_with_the_guard_at_half(mongo_db, settings)
    _job(mongo_db, guarded, "truncated", 2, rows[:4])
    _finalize(mongo_db, guarded, "truncated")
    _job(mongo_db, guarded, "complete", 3, rows)
    _finalize(mongo_db, guarded, "complete")
    assert datasets.read_active_sync(mongo_db).version == 3  # type: ignore[union-attr]
    upkeep.apply_cleanup(mongo_db, _cleanup(mongo_db, keep=2, grace_s=60), grace_s=60)
    assert lifecycle.read_record(mongo_db, 1).state == lifecycle.READY  # type: ignore[union-attr]
    assert lifecycle.read_record(mongo_db, 2).state == lifecycle.RETIRED  # type: ignore[union-attr]


def test_held_versions_do_not_pile_up_a_newer_held_one_releases_the_older(
    mongo_db: Any, settings: Settings
) -> None:
    """Truncated exports three times in a row beside live v1: only the newest held version
    waits for an operator; the older held ones go by the keep policy."""
    guarded, rows = _ten_rows_live_with_the_guard_at_half(mongo_db, settings)
    for version in (2, 3, 4):
        _job(mongo_db, guarded, f"truncated{version}", version, rows[:3])
        _finalize(mongo_db, guarded, f"truncated{version}")
        held = mongo_db[lifecycle.JOBS].find_one({"_id": f"truncated{version}"})
        assert held["status"] == lifecycle.HELD
    upkeep.apply_cleanup(mongo_db, _cleanup(mongo_db, keep=2, grace_s=60), grace_s=60)
    states = {v: lifecycle.read_record(mongo_db, v).state for v in (1, 2, 3, 4)}  # type: ignore[union-attr]
    assert states == {
        1: lifecycle.READY,  # live
        2: lifecycle.RETIRED,
        3: lifecycle.RETIRED,
        4: lifecycle.READY,  # the newest held one, still activatable
    }
    lifecycle.activate_by_hand(mongo_db, 4)
    assert datasets.read_active_sync(mongo_db).version == 4  # type: ignore[union-attr]


def test_shrink_guard_lets_an_upload_that_allows_it_go_live(
    mongo_db: Any, settings: Settings
) -> None:
    guarded, rows = _ten_rows_live_with_the_guard_at_half(mongo_db, settings)
    _job(mongo_db, guarded, "small", 2, rows[:1])
    mongo_db[lifecycle.JOBS].update_one({"_id": "small"}, {"$set": {"allow_shrink": True}})
    _finalize(mongo_db, guarded, "small")
    assert mongo_db[lifecycle.JOBS].find_one({"_id": "small"})["status"] == lifecycle.SUCCEEDED
    assert datasets.read_active_sync(mongo_db).version == 2  # type: ignore[union-attr]
    # Off by default: the contract is that every valid file replaces the whole dataset.
    _job(mongo_db, settings, "tiny", 3, rows[:1])
    _finalize(mongo_db, settings, "tiny")
    assert datasets.read_active_sync(mongo_db).version == 3  # type: ignore[union-attr]


def test_the_sweep_removes_run_files_of_ended_or_unknown_jobs_only(
    mongo_db: Any, settings: Settings
) -> None:
    for job_id, status in (("live", lifecycle.RUNNING), ("over", lifecycle.FAILED)):
        mongo_db[lifecycle.JOBS].insert_one(
            {**job_records.new_job(job_id, 1, "f", 1, "upload"), "status": status}
        )
    for job_id in ("live", "over", "gone"):
        (settings.runs_dir / job_id).mkdir(parents=True)
        (settings.runs_dir / job_id / "c000000.run").write_bytes(b"x")
    upkeep.sweep_runs(mongo_db, settings.runs_dir)
    assert sorted(p.name for p in settings.runs_dir.iterdir()) == ["live"]


def test_a_lost_run_file_fails_the_partition_with_its_name(
    mongo_db: Any, settings: Settings
) -> None:
    lines = [f"id{i},1,2018-08-04 05:32:31" for i in range(3000)]
    (settings.uploads_dir / "l.csv").write_text("".join(f"{x}\n" for x in lines))
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("l", 8, "l.csv", 10, "upload"))
    small = settings.model_copy(update={"chunk_size_bytes": 20_000})
    chunks: list[tuple[int, int, int]] = []
    job_steps.plan(mongo_db, small, "l", lambda *c: chunks.append(c))
    for chunk in chunks:
        job_steps.load(mongo_db, small, "l", *chunk)
    partitions: list[int] = []
    job_steps.after_loading(mongo_db, small, "l", partitions.append)
    (settings.runs_dir / "l" / "c000001.run").unlink()
    with pytest.raises(PermanentError, match=r"run file c000001\.run .* missing"):
        job_steps.write_partition(mongo_db, small, "l", partitions[0])
    assert datasets.read_active_sync(mongo_db) is None  # nothing went live


class _Replies(monitoring.CommandListener):
    def __init__(self) -> None:
        self.found: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "find":
            self.found.extend(event.reply["cursor"]["firstBatch"])

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_readers_of_the_live_version_never_receive_the_pointers_barred_set(
    mongo_db: Any, settings: Settings
) -> None:
    """Every API process reads the pointer twice a second, and its barred set gains an
    entry for every version ever removed (48 a day): that set must not travel with it."""
    assert load_dataset(mongo_db, 3, [ROW])
    meta = mongo_db[datasets.META_COLLECTION]
    meta.update_one(
        {"_id": datasets.ACTIVE_ID}, {"$addToSet": {"barred": {"$each": list(range(100, 2100))}}}
    )
    replies = _Replies()
    url = settings.mongo_url.get_secret_value()

    async def read() -> datasets.ActiveDataset | None:
        client: AsyncMongoClient[Any] = AsyncMongoClient(url, event_listeners=[replies])
        try:
            return await datasets.read_active(client[settings.mongo_db])
        finally:
            await client.close()

    active = asyncio.run(read())
    sync_client: MongoClient[Any] = MongoClient(url, event_listeners=[replies])
    try:
        active_sync = datasets.read_active_sync(sync_client[settings.mongo_db])
    finally:
        sync_client.close()
    assert active is not None and active == active_sync and active.version == 3
    assert len(replies.found) == 2
    for doc in replies.found:
        assert doc["version"] == 3 and "barred" not in doc and "history" not in doc


def test_a_partition_is_never_reduced_by_two_deliveries_at_once(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reduce that outlives the visibility timeout is delivered again while it still
    runs: the second copy finds the partition held and steps back (to be sent again);
    once the holder's lease runs out (it died) a delivery takes the partition over; a
    holder that lost its lease stops; a partition already counted is not reduced again."""
    lines = [f"id{i},{i}.5,2018-08-04 05:32:31" for i in range(300)]
    (settings.uploads_dir / "lease.csv").write_text("".join(f"{x}\n" for x in lines))
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("lease", 5, "lease.csv", 10, "upload"))
    one = settings.model_copy(update={"min_partitions": 1})
    chunks: list[tuple[int, int, int]] = []
    job_steps.plan(mongo_db, one, "lease", lambda *c: chunks.append(c))
    for chunk in chunks:
        job_steps.load(mongo_db, one, "lease", *chunk)
    partitions: list[int] = []
    job_steps.after_loading(mongo_db, one, "lease", partitions.append)
    assert partitions == [0]
    assert job_records.claim_partition(mongo_db, "lease", 0, "first", 60)  # first copy works
    assert job_steps.write_partition(mongo_db, one, "lease", 0) == "busy"
    assert mongo_db[datasets.collection_name(5)].count_documents({}) == 0  # nothing written
    assert job_records.renew_partition(mongo_db, "lease", 0, "first", 60)
    # The first copy died: its lease runs out, the next delivery takes over and finishes.
    later = now() + timedelta(seconds=61)
    monkeypatch.setattr(job_records, "now", lambda: later)
    assert job_steps.write_partition(mongo_db, one, "lease", 0) == "last"
    assert not job_records.renew_partition(mongo_db, "lease", 0, "first", 60)  # it lost it
    assert job_records.claim_partition(mongo_db, "lease", 0, "late", 60)  # released when done
    job_records.release_partition(mongo_db, "lease", 0, "late")
    # Counted already: a redelivery does no work, and still sends the finalizer.
    monkeypatch.setattr(job_steps, "partition_documents", None)
    assert job_steps.write_partition(mongo_db, one, "lease", 0) == "last"


def _ended_during(db: Any, monkeypatch: pytest.MonkeyPatch, name: str, job_id: str) -> None:
    """The delivery stalls between its check that the job runs and its write (its host cut
    off): meanwhile the job ends and its clean-up removes the job's records; then the write
    lands."""
    write = getattr(job_records, name)

    def stalled(*args: Any, **kwargs: Any) -> Any:
        assert lifecycle.fail_job(db, job_id, "the watchdog, while this delivery stalled")
        job_records.delete_chunk_results(db, job_id)
        return write(*args, **kwargs)

    monkeypatch.setattr(job_records, name, stalled)


def test_a_chunk_result_landing_after_the_job_ended_is_not_left_behind(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = stored_job(mongo_db, settings, "late", 1, [ROW])
    _ended_during(mongo_db, monkeypatch, "save_chunk_result", "late")
    assert job_steps.load(mongo_db, settings, "late", *chunks[0]) == "skipped"
    assert mongo_db[job_records.CHUNKS].count_documents({"job_id": "late"}) == 0


def test_a_partition_result_landing_after_the_job_ended_is_not_left_behind(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    partitions = mapped_job(mongo_db, settings, "late", 1, [ROW])
    _ended_during(mongo_db, monkeypatch, "save_partition_result", "late")
    assert job_steps.write_partition(mongo_db, settings, "late", partitions[0]) == "skipped"
    assert mongo_db[job_records.PARTITIONS].count_documents({"job_id": "late"}) == 0
