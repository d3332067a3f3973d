"""The lifecycle's decisions as fixed examples, one sentence of behaviour per test: which
versions the keep policy retires, which collections cleanup may drop, what the watchdog does
with a stalled job, whether a version went live. (The transitions that apply them to the
store are tested against real services in tests/integration/test_lifecycle*.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.dataset.lifecycle import (
    HISTORY_KEPT,
    Pointer,
    VersionRecord,
    collections_to_remove,
    refusal,
    shrink_refusal,
    stalled_action,
    upgraded_record,
    versions_to_retire,
    went_live,
)

CUTOFF = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BEFORE = CUTOFF - timedelta(seconds=1)
AFTER = CUTOFF + timedelta(seconds=1)


def pointer(
    version: int | None = None,
    high_water: int = 0,
    history: tuple[tuple[int, datetime], ...] = (),
    barred: frozenset[int] = frozenset(),
) -> Pointer:
    return Pointer(version, max(high_water, version or 0), history, barred)


def record(
    version: int,
    state: Any = "ready",
    since: datetime | None = None,
    activated_at: datetime | None = None,
) -> VersionRecord:
    return VersionRecord(version, state, f"promotions_v{version}", since, activated_at)


# --- Pointer.named_since: "not knowing is not no" ---------------------------------------------


def test_the_live_version_is_named_now() -> None:
    assert pointer(7).named_since(7, CUTOFF)
    assert not pointer(7).named_since(6, CUTOFF)


def test_a_version_the_pointer_left_after_the_cutoff_was_named_since() -> None:
    p = pointer(8, history=((6, BEFORE), (7, AFTER)))
    assert p.named_since(7, CUTOFF)
    assert not p.named_since(6, CUTOFF)  # left before the cutoff
    assert not p.named_since(5, CUTOFF)  # never named


def test_a_version_the_pointer_left_exactly_at_the_cutoff_was_named_since() -> None:
    assert pointer(8, history=((7, CUTOFF),)).named_since(7, CUTOFF)


def test_a_full_history_reaching_past_the_cutoff_means_any_version_may_have_been_named() -> None:
    """History keeps HISTORY_KEPT = 32 entries: when all are after the cutoff, older
    entries were cut off and may have named the version."""
    assert HISTORY_KEPT == 32
    recent = tuple((100 + i, CUTOFF + timedelta(seconds=i)) for i in range(32))
    assert pointer(200, history=recent).named_since(5, CUTOFF)
    assert not pointer(200, history=recent[1:]).named_since(5, CUTOFF)  # 31: complete
    old_first = ((99, BEFORE), *recent[1:])
    assert not pointer(200, history=old_first).named_since(5, CUTOFF)  # reaches before cutoff


def test_ever_named_is_now_or_anywhere_in_the_history() -> None:
    p = pointer(8, history=((6, BEFORE),))
    assert (p.ever_named(8), p.ever_named(6), p.ever_named(7)) == (True, True, False)


def test_the_pointer_reads_a_missing_document_as_nothing_live() -> None:
    assert Pointer.from_doc(None) == Pointer(None, 0, (), frozenset())


def test_the_pointer_reads_its_document() -> None:
    doc = {
        "version": 4,
        "high_water": 5,
        "history": [{"version": 3, "until": BEFORE}],
        "barred": [5],
    }
    assert Pointer.from_doc(doc) == Pointer(4, 5, ((3, BEFORE),), frozenset({5}))


def test_a_version_record_reads_its_document() -> None:
    doc = {"version": 3, "state": "failed", "failed_at": BEFORE, "activated_at": None}
    assert VersionRecord.from_doc(doc) == record(3, "failed", BEFORE)
    live = {"version": 4, "state": "ready", "activated_at": AFTER}
    assert VersionRecord.from_doc(live) == record(4, "ready", None, AFTER)
    assert VersionRecord.from_doc({"version": 2}) == record(2, "building")
    legacy = {"version": 1, "state": "dropped", "dropped_at": BEFORE, "collection": "c1"}
    migrated = upgraded_record(legacy)  # an earlier release's record, once migrated
    assert migrated is not None
    assert VersionRecord.from_doc(migrated) == VersionRecord(1, "retired", "c1", BEFORE, None)
    assert upgraded_record(live) is None
    both = {"version": 1, "state": "retired", "retired_at": AFTER, "failed_at": BEFORE}
    assert VersionRecord.from_doc(both).since == AFTER


# --- versions_to_retire: the keep policy -------------------------------------------------------


def test_the_keep_count_includes_the_live_version() -> None:
    records = [record(v) for v in range(1, 6)]
    assert versions_to_retire(records, pointer(5), keep=3) == [2, 1]


def test_the_live_version_is_kept_even_when_it_is_not_the_newest() -> None:
    records = [record(v) for v in range(1, 6)]
    assert versions_to_retire(records, pointer(2, high_water=5), keep=3) == [3, 1]


def test_with_nothing_live_the_newest_keep_versions_stay() -> None:
    records = [record(v) for v in range(1, 4)]
    assert versions_to_retire(records, pointer(None, high_water=3), keep=2) == [1]


@pytest.mark.parametrize(("keep", "retired"), [(1, [4, 3, 2, 1]), (0, [4, 3, 2, 1])])
def test_keeping_one_or_none_keeps_only_the_live_version(keep: int, retired: list[int]) -> None:
    records = [record(v) for v in range(1, 6)]
    assert versions_to_retire(records, pointer(5), keep=keep) == retired


def _held(version: int) -> VersionRecord:
    return VersionRecord(version, "ready", f"promotions_v{version}", None, None, held=True)


def test_a_newer_held_version_releases_the_older_held_ones() -> None:
    """The shrink guard held v2..v7 beside live v1: only the newest held one waits for an
    operator, the others go by the keep policy instead of piling up."""
    records = [record(1), *(_held(v) for v in range(2, 8))]
    assert versions_to_retire(records, pointer(1), keep=2) == [6, 5, 4, 3, 2]
    assert versions_to_retire(records[:2], pointer(1), keep=2) == []  # one held: kept
    # One being finalized (ready, not yet held or switched) is never released.
    assert versions_to_retire([*records, record(8)], pointer(1), keep=2) == [6, 5, 4, 3, 2]


def test_a_newer_live_version_settles_held_ones_under_the_keep_policy() -> None:
    records = [record(1), _held(2), _held(3), record(4)]
    served = pointer(4, history=((1, BEFORE),))
    assert versions_to_retire(records, served, keep=2) == [3, 2]  # v1 served: kept
    by_hand = pointer(3, high_water=4, history=((1, BEFORE), (4, AFTER)))  # v3 activated
    assert versions_to_retire(records, by_hand, keep=2) == [1, 2]


def test_a_ready_version_newer_than_any_switch_is_never_retired() -> None:
    """Version 6 is between "ready" and its switch (high water 5): retiring it would take a
    dataset away just before it goes live."""
    records = [record(v) for v in range(1, 7)]
    assert versions_to_retire(records, pointer(5), keep=2) == [3, 2, 1]
    assert versions_to_retire(records, pointer(5, high_water=6), keep=2) == [4, 3, 2, 1]


def test_a_version_that_served_is_kept_before_a_newer_one_that_never_did() -> None:
    """v7 was held by the shrink guard (never live), v8 then went live: the rollback slot
    goes to v6, the last dataset that served before, not to the truncated v7."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    records = [record(6, activated_at=at), record(7), record(8, activated_at=at)]
    assert versions_to_retire(records, pointer(8), keep=2) == [7]
    # A version the pointer named counts as having served, whatever its record says.
    named = pointer(8, history=((5, at),))
    assert versions_to_retire([record(5), record(7), record(8)], named, keep=2) == [7]
    assert versions_to_retire(records, pointer(8), keep=3) == []


def test_only_ready_versions_are_retired() -> None:
    records = [
        record(1, "failed"),
        record(2, "retired"),
        record(3, "building"),
        record(4, "removed"),
        record(5),
        record(6),
    ]
    assert versions_to_retire(records, pointer(6), keep=1) == [5]


# --- collections_to_remove: what cleanup may drop ----------------------------------------------


def test_a_collection_failed_or_retired_before_the_grace_cutoff_is_removed() -> None:
    names = ["promotions_v1", "promotions_v2", "promotions_v3"]
    records = [record(1, "failed", BEFORE), record(2, "retired", BEFORE), record(3)]
    assert collections_to_remove(names, records, pointer(3), CUTOFF) == [1, 2]


@pytest.mark.parametrize("since", [CUTOFF, AFTER, None])
def test_a_collection_failed_or_retired_within_the_grace_period_stays(
    since: datetime | None,
) -> None:
    names = ["promotions_v1", "promotions_v2"]
    records = [record(1, "failed", since), record(2, "retired", since)]
    assert collections_to_remove(names, records, pointer(3), CUTOFF) == []


@pytest.mark.parametrize("state", ["ready", "building", "removed"])
def test_ready_building_and_removed_versions_are_not_expired(state: str) -> None:
    records = [record(1, state, BEFORE)]
    assert collections_to_remove(["promotions_v1"], records, pointer(), CUTOFF) == []


def test_a_collection_without_a_record_is_removed() -> None:
    assert collections_to_remove(["promotions_v9"], [], pointer(3), CUTOFF) == [9]


def test_a_barred_version_goes_whatever_its_record_says_unless_still_building() -> None:
    """A remover that died after barring leaves a ready (revived) record: barred wins. A
    building version is barred by a failing job before it is marked failed: that job
    finishes the failure itself."""
    names = ["promotions_v1", "promotions_v2"]
    records = [record(1, "ready"), record(2, "building")]
    p = pointer(3, barred=frozenset({1, 2}))
    assert collections_to_remove(names, records, p, CUTOFF) == [1]


def test_a_barred_expired_version_whose_collection_is_gone_is_still_removed() -> None:
    """A drop past its deadline that the store finished by itself: the record still moves
    to removed. Not barred (no remover passed the grace check), not expired, or named since
    the cutoff: it stays as it is."""
    records = [
        record(1, "retired", BEFORE),
        record(2, "failed", BEFORE),
        record(3, "retired", BEFORE),
        record(4, "retired", AFTER),
        record(5, "retired", BEFORE),
        record(6, "removed", BEFORE),
        record(7),
    ]
    p = pointer(7, history=((5, AFTER),), barred=frozenset({1, 2, 4, 5, 6}))
    assert collections_to_remove(["promotions_v7"], records, p, CUTOFF) == [1, 2]


def test_a_collection_the_pointer_named_after_the_cutoff_stays() -> None:
    names = ["promotions_v1", "promotions_v2"]
    records = [record(1, "retired", BEFORE), record(2, "retired", BEFORE)]
    p = pointer(3, history=((1, AFTER), (2, BEFORE)))
    assert collections_to_remove(names, records, p, CUTOFF) == [2]
    assert collections_to_remove(names, [], pointer(1), CUTOFF) == [2]


def test_other_collections_are_never_removed() -> None:
    names = ["jobs", "datasets", "promotions_vx", "promotions_v", "promotions_v1_old", "x_v1"]
    assert collections_to_remove(names, [], pointer(), CUTOFF) == []


def test_every_collection_is_judged_on_its_own() -> None:
    """Neither another collection nor a kept version stops the sweep early."""
    names = ["jobs", "promotions_v1", "promotions_v2", "promotions_v3"]
    records = [record(1), record(2, "failed", BEFORE)]
    assert collections_to_remove(names, records, pointer(1), CUTOFF) == [2, 3]


# --- went_live, stalled_action, refusal --------------------------------------------------------


def test_a_version_went_live_if_its_record_says_so_or_the_pointer_ever_named_it() -> None:
    assert went_live(record(4, activated_at=BEFORE), pointer(5), 4)
    assert went_live(record(4), pointer(5, history=((4, BEFORE),)), 4)
    assert went_live(None, pointer(4), 4)
    assert not went_live(record(4), pointer(5, history=((3, BEFORE),)), 4)
    assert not went_live(None, pointer(None), 4)


@pytest.mark.parametrize(
    ("job", "action"),
    [
        ({"status": "queued"}, "requeue"),  # sent once (no count yet)
        ({"status": "queued", "plan_attempts": 2}, "requeue"),
        ({"status": "queued", "plan_attempts": 3}, "fail"),  # sent plan_attempts = 3 times
        ({"status": "queued", "plan_attempts": 4}, "fail"),
        ({"status": "running", "plan_attempts": 1}, "fail"),  # dead workers' chunks: lost
        ({"status": "finalizing"}, "decide"),  # whether it went live decides
        ({"status": "finalizing", "plan_attempts": 9}, "decide"),
    ],
)
def test_what_the_watchdog_does_with_a_stalled_job(job: dict[str, Any], action: str) -> None:
    assert stalled_action(job, plan_attempts=3) == action


def test_a_queued_job_sent_once_is_not_resent_when_one_attempt_is_allowed() -> None:
    assert stalled_action({"status": "queued"}, plan_attempts=1) == "fail"
    assert stalled_action({"status": "queued"}, plan_attempts=2) == "requeue"


@pytest.mark.parametrize(
    ("rec", "reason"),
    [
        (None, "dataset version 4 does not exist"),
        (
            record(4, "removed"),
            "dataset version 4 was removed (only the newest complete ones are kept)",
        ),
        (record(4, "failed"), "dataset version 4 failed to load; it was never complete"),
        (record(4, "building"), "dataset version 4 is still loading"),
        (
            record(4, "ready"),
            "dataset version 4 is being removed and can no longer be activated",
        ),
    ],
)
def test_why_a_version_cannot_be_activated(rec: VersionRecord | None, reason: str) -> None:
    assert refusal(4, rec) == reason


# --- shrink_refusal: the shrink guard --------------------------------------------------------


HELD_499 = (
    "held: version 7 has 499 rows, 49.9% of the 1000 rows serving now, below "
    "MIN_ROWS_RATIO (50%); it is loaded and kept but not live. To make it live: "
    "POST /datasets/7/activate (or upload the file again with allow_shrink=true)"
)


@pytest.mark.parametrize(
    ("active_rows", "new_rows", "min_ratio", "refused"),
    [
        (1000, 499, 0.5, HELD_499),  # below half of what serves now: held
        (1000, 500, 0.5, None),  # exactly the ratio: replaces the dataset
        (1000, 5000, 0.5, None),  # growing is always fine
        (1000, 0, 0.0, None),  # MIN_ROWS_RATIO 0: the guard is off, any file replaces
        (None, 1, 0.5, None),  # nothing live yet: nothing to shrink
        (0, 0, 0.5, None),  # the live dataset is empty
    ],
)
def test_a_much_smaller_file_is_held_instead_of_replacing_the_dataset(
    active_rows: int | None, new_rows: int, min_ratio: float, refused: str | None
) -> None:
    assert shrink_refusal(active_rows, new_rows, min_ratio, 7) == refused


def test_a_version_record_reads_whether_the_shrink_guard_held_it() -> None:
    held = {"version": 5, "state": "ready", "held_at": BEFORE}
    assert VersionRecord.from_doc(held).held
    assert not VersionRecord.from_doc({"version": 5, "state": "ready"}).held


def test_a_held_version_that_went_live_by_hand_is_settled_not_released() -> None:
    """v5 was held, activated by hand (high water 5), then rolled back from to v4; v7 is
    held now. v5 once served: the keep policy counts it like any settled version, a newer
    held version never releases it."""
    records = [record(4), _held(5), _held(7)]
    assert versions_to_retire(records, pointer(4, high_water=5), keep=2) == []
    assert versions_to_retire(records, pointer(4, high_water=5), keep=1) == [5]


def test_a_gone_collection_retired_exactly_at_the_cutoff_is_not_yet_removed() -> None:
    records = [record(1, "retired", CUTOFF), record(2)]
    p = pointer(2, barred=frozenset({1}))
    assert collections_to_remove(["promotions_v2"], records, p, CUTOFF) == []
