"""Opening names others control, and showing names others chose."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.infra.safe_files import UnsafeFile, open_regular
from shared.infra.safe_text import escape_controls, escape_name


def test_a_regular_file_is_read_through_its_handle(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"rows\n")
    with open_regular(path) as f:
        path.unlink()  # the name is gone; the handle still reads the checked file
        assert f.read() == b"rows\n"


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        open_regular(tmp_path / "link", single_link=False)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafeFile, match="FIFO"):
        open_regular(tmp_path / "fifo")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFile, match="directory"):
        open_regular(tmp_path)


def test_a_hard_link_is_refused_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    os.link(tmp_path / "a", tmp_path / "b")
    with pytest.raises(UnsafeFile, match="2 hard links"):
        open_regular(tmp_path / "b")
    with open_regular(tmp_path / "b", single_link=False) as f:
        assert f.read() == b"x"


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "none")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("promoções.csv".encode("cp1252"), "promo\\xe7\\xf5es.csv"),
        ("promoções.csv".encode(), "promoções.csv"),
        (b"two\nlines.csv", "two\\x0alines.csv"),
        (b"\x1b[2Jclear.csv", "\\x1b[2Jclear.csv"),
        ("evil\u202ecsv.exe".encode(), "evil\\u202ecsv.exe"),
    ],
)
def test_names_are_shown_escaped(raw: bytes, shown: str) -> None:
    assert escape_name(os.fsdecode(raw)) == shown


@given(st.binary(max_size=64))
def test_any_name_becomes_printable_utf8(raw: bytes) -> None:
    shown = escape_name(os.fsdecode(raw))
    shown.encode("utf-8")  # strict: BSON and terminals accept it
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in shown)


def _shown_as_is(c: str) -> bool:
    bidi_or_separator = (
        "\u202a" <= c <= "\u202e" or "\u2066" <= c <= "\u2069" or c in "\u2028\u2029"
    )
    return unicodedata.category(c) not in ("Cc", "Cs") and not bidi_or_separator


@given(st.text(max_size=64))
def test_text_without_controls_is_unchanged(text: str) -> None:
    if all(_shown_as_is(c) for c in text):
        assert escape_controls(text) == text


def test_workers_never_read_a_stored_file_through_a_link(tmp_path: Path) -> None:
    """uploads/ is on a shared volume: a stored file swapped for a link after the job was
    recorded fails the job with the reason instead of loading what the link points to."""
    from shared.settings import Settings
    from worker.job_steps import PlanProblem, _plan_file

    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.68,2018-08-04 05:32:31\n")
    stored = tmp_path / "job.csv"
    stored.symlink_to(secret)
    settings = Settings(data_dir=tmp_path / "data")
    with pytest.raises(PlanProblem, match="the stored file is refused: it is a symbolic link"):
        _plan_file(stored, settings, "job", None)
