"""The lifecycle's Mermaid state diagram, drawn from the tables in ``shared.dataset.lifecycle`` so
that the picture in the docs cannot drift from what the code allows.

``python -m shared.dataset.lifecycle_diagram`` prints it; ``--write docs/lifecycle.md`` replaces
the block between the marker lines there (a unit test fails while they disagree).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared.dataset.lifecycle import (
    JOB_TRANSITIONS,
    PHASE_TRANSITIONS,
    POINTER_TRANSITIONS,
    VERSION_TRANSITIONS,
    Transition,
)

BEGIN = "<!-- lifecycle-diagram:begin -->"
END = "<!-- lifecycle-diagram:end -->"

# (composite state, table): state names repeat across tables (a job and a version both
# fail), so each table's states get ids of their own, prefixed. The pointer part is a
# version as the pointer document sees it.
PARTS: tuple[tuple[str, tuple[Transition[Any], ...]], ...] = (
    ("Job", JOB_TRANSITIONS),
    ("JobPhase", PHASE_TRANSITIONS),
    ("Version", VERSION_TRANSITIONS),
    ("Pointer", POINTER_TRANSITIONS),
)


class MarkersMissing(ValueError):
    """The document lacks the begin/end marker lines (each exactly once, in order)."""


def _label(row: Transition[Any]) -> str:
    return f"{row.why} ({row.rule.replace(':', ', ')})"


def _drawn(row: Transition[Any]) -> list[str]:
    """The sources an arrow is drawn from: a repeat (a redelivery finding the state
    reached) only when it is all the row does."""
    if not row.sources:
        return ["[*]"]
    moves = [s for s in row.sources if s != row.target]
    return moves or list(row.sources)


def _part(name: str, table: tuple[Transition[Any], ...]) -> list[str]:
    prefix = name.lower()
    states: list[str] = []
    for row in table:
        for state in (*row.sources, row.target):
            if state not in states:
                states.append(state)
    lines = [f"    state {name} {{"]
    lines += [f'        state "{state}" as {prefix}_{state}' for state in states]
    for row in table:
        for source in _drawn(row):
            start = source if source == "[*]" else f"{prefix}_{source}"
            lines.append(f"        {start} --> {prefix}_{row.target}: {_label(row)}")
    lines.append("    }")
    return lines


def mermaid() -> str:
    """The diagram as a fenced Mermaid block (no trailing newline)."""
    lines = ["```mermaid", "stateDiagram-v2"]
    for name, table in PARTS:
        lines += _part(name, table)
    lines.append("```")
    return "\n".join(lines)


def _bounds(text: str) -> tuple[list[str], int, int]:
    lines = text.split("\n")
    if lines.count(BEGIN) != 1 or lines.count(END) != 1:
        raise MarkersMissing(f"expected one line {BEGIN!r} and one line {END!r}")
    begin, end = lines.index(BEGIN), lines.index(END)
    if end < begin:
        raise MarkersMissing(f"{END!r} comes before {BEGIN!r}")
    return lines, begin, end


def block_in(text: str) -> str:
    """What a document holds between its marker lines."""
    lines, begin, end = _bounds(text)
    return "\n".join(lines[begin + 1 : end])


def with_diagram(text: str) -> str:
    """The document with the generated diagram between its marker lines."""
    lines, begin, end = _bounds(text)
    return "\n".join([*lines[: begin + 1], mermaid(), *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="update the diagram block of this file")
    args = parser.parse_args(argv)
    if args.write is None:
        print(mermaid())
        return 0
    args.write.write_text(with_diagram(args.write.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
