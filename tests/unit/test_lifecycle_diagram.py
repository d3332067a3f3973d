"""The lifecycle diagram in the docs is the one the tables in shared/dataset/lifecycle.py draw."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.dataset import lifecycle, lifecycle_diagram
from shared.dataset.lifecycle_diagram import (
    BEGIN,
    END,
    MarkersMissing,
    block_in,
    mermaid,
    with_diagram,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def test_the_diagram_in_the_docs_is_the_one_the_tables_draw() -> None:
    assert block_in(DOC.read_text()) == mermaid(), (
        "docs/lifecycle.md disagrees with the tables: run "
        "python -m shared.dataset.lifecycle_diagram --write docs/lifecycle.md"
    )


def test_every_move_of_every_table_is_drawn() -> None:
    drawn = mermaid()
    for name, table in lifecycle_diagram.PARTS:
        prefix = name.lower()
        for row in table:
            for source in row.sources:
                if source != row.target:
                    assert f"{prefix}_{source} --> {prefix}_{row.target}: " in drawn, row
    assert "version_ready --> version_removed: " in drawn
    assert "pointer_unnamed --> pointer_barred: " in drawn


def test_a_changed_table_no_longer_matches_the_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = lifecycle.VERSION_TRANSITIONS[:-1]  # remove_version left out
    parts = tuple((n, rows if n == "Version" else t) for n, t in lifecycle_diagram.PARTS)
    monkeypatch.setattr(lifecycle_diagram, "PARTS", parts)
    assert block_in(DOC.read_text()) != mermaid()


def test_writing_replaces_only_the_block_between_the_markers() -> None:
    text = f"# T\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n"
    assert with_diagram(text) == f"# T\n\nbefore\n{BEGIN}\n{mermaid()}\n{END}\nafter\n"
    with pytest.raises(MarkersMissing):
        block_in(f"{BEGIN}\n")
    with pytest.raises(MarkersMissing):
        block_in(f"{END}\n{BEGIN}\n")
    with pytest.raises(MarkersMissing):
        block_in(f"  {BEGIN}\n{END}\n")  # the marker lines are exact


def test_the_module_prints_the_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    assert lifecycle_diagram.main([]) == 0
    assert capsys.readouterr().out == mermaid() + "\n"
