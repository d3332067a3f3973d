"""``make mutation``: mutate the core modules with mutmut, score each module, write the report.

mutmut (configured in pyproject.toml, ``[tool.mutmut]``) does the mutating and the running;
this script only adds what mutmut lacks: a score per module over the functions in scope, the
allow-list of equivalent mutants (``mutation/equivalent.toml``, one reason per entry), the
report (``mutation/REPORT.md``) and a failing exit code when a module is under the target.

    .venv/bin/python -m mutation.run [--max-children N] [--keep] [MUTANT_GLOB ...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [str(Path(sys.executable).parent / "mutmut")]
ALLOW_LIST = ROOT / "mutation" / "equivalent.toml"
REPORT = ROOT / "mutation" / "REPORT.md"
TARGET = 0.85

# The core modules, in report order. ``None``: every function is scored. A list: only these
# functions are (the rest of the module is exercised by integration tests with real services,
# too slow to run once per mutant); their mutants are counted as "not scored".
SCOPE: dict[str, list[str] | None] = {
    "shared/fileformat/promotion_rows.py": None,
    "shared/fileformat/fast_parser.py": None,
    "worker/chunking.py": None,
    "worker/bucket_writer.py": ["check_bulk_error", "write_buckets", "merge", "insert_batches"],
    "worker/shuffle_files.py": None,
    "shared/fileformat/bucket_layout.py": None,
    "shared/errors.py": None,
    "shared/readpath/cache.py": None,
    "shared/dataset/lifecycle.py": [
        "Pointer.from_doc",
        "Pointer.named_since",
        "Pointer.ever_named",
        "VersionRecord.from_doc",
        "versions_to_retire",
        "collections_to_remove",
        "went_live",
        "shrink_refusal",
        "stalled_action",
        "refusal",
    ],
}

KILLED = ("killed", "timeout", "caught by type check")


@dataclass
class Mutant:
    name: str  # worker.chunking.x_plan_chunks__mutmut_3
    status: str
    module: str  # worker/chunking.py
    function: str  # plan_chunks, or Pointer.named_since
    diff: str = ""
    reason: str | None = None  # set when allow-listed as equivalent

    @property
    def change(self) -> tuple[str, str]:
        """(original lines, mutated lines) of the diff, stripped."""
        old, new = [], []
        for line in self.diff.splitlines():
            if line.startswith(("---", "+++")):
                continue
            if line.startswith("-"):
                old.append(line[1:].strip())
            elif line.startswith("+"):
                new.append(line[1:].strip())
        return "\n".join(old), "\n".join(new)


@dataclass
class Score:
    module: str
    counts: Counter[str] = field(default_factory=Counter)
    not_scored: int = 0
    not_run: int = 0

    @property
    def scored(self) -> int:
        return sum(self.counts.values()) - self.counts["equivalent"]

    @property
    def killed(self) -> int:
        return sum(self.counts[s] for s in KILLED)

    @property
    def score(self) -> float:
        return self.killed / self.scored if self.scored else 1.0


def _parse_name(name: str) -> tuple[str, str]:
    """(module path, function) of a mutant name; methods are mangled as xǁClassǁmethod."""
    mangled = name.partition("__mutmut_")[0]
    dotted, _, key = mangled.rpartition(".")
    if key.startswith("xǁ"):
        cls, _, method = key[2:].partition("ǁ")
        function = f"{cls}.{method}"
    else:
        function = key.removeprefix("x_")
    return dotted.replace(".", "/") + ".py", function


def _mutmut(*args: str) -> str:
    out = subprocess.run([*MUTMUT, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout


def collect() -> list[Mutant]:
    mutants = []
    for line in _mutmut("results", "--all", "true").splitlines():
        m = re.fullmatch(r"\s*(\S+): (.+)", line)
        if m is None:
            continue
        module, function = _parse_name(m[1])
        mutants.append(Mutant(m[1], m[2].strip(), module, function))
    return mutants


Entry = dict[str, Any]


def load_allow_list() -> list[Entry]:
    entries: list[Entry] = tomllib.loads(ALLOW_LIST.read_text())["equivalent"]
    for entry in entries:
        missing = {"module", "function", "original", "mutant", "reason"} - entry.keys()
        if missing or not entry["reason"].strip():
            raise SystemExit(f"{ALLOW_LIST.name}: entry {entry} lacks {missing or 'a reason'}")
    return entries


def _matches(entry: Entry, mutant: Mutant) -> bool:
    """Same module and function (a list: any of them), same original line, and the mutated
    line is the entry's ``mutant`` (a list: any of them)."""
    functions = entry["function"] if isinstance(entry["function"], list) else [entry["function"]]
    forms = entry["mutant"] if isinstance(entry["mutant"], list) else [entry["mutant"]]
    old, new = mutant.change
    return (
        entry["module"] == mutant.module
        and mutant.function in functions
        and entry["original"].strip() == old
        and new in (f.strip() for f in forms)
    )


def score(mutants: list[Mutant], allow: list[Entry]) -> tuple[dict[str, Score], list[Entry]]:
    scores = {module: Score(module) for module in SCOPE}
    used: set[int] = set()
    for mutant in mutants:
        scope = SCOPE.get(mutant.module)
        if mutant.module not in SCOPE:
            continue
        if scope is not None and mutant.function not in scope:
            scores[mutant.module].not_scored += 1
            continue
        status = mutant.status
        if status == "not checked":  # not run: outside the globs, or the run was stopped
            scores[mutant.module].not_run += 1
            continue
        if status not in KILLED:
            mutant.diff = _mutmut("show", mutant.name)
            for i, entry in enumerate(allow):
                if _matches(entry, mutant):
                    mutant.reason = entry["reason"]
                    status = "equivalent"
                    used.add(i)
                    break
        scores[mutant.module].counts[status] += 1
    # Stale: matched nothing in a module whose every mutant ran (not a partial run).
    complete = {m for m, s in scores.items() if s.counts and not s.not_run}
    stale = [e for i, e in enumerate(allow) if i not in used and e["module"] in complete]
    return scores, stale


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def write_report(
    mutants: list[Mutant],
    scores: dict[str, Score],
    stale: list[Entry],
    command: str,
    seconds: float | None,
) -> None:
    version = importlib.metadata.version("mutmut")
    took = f"{seconds:.0f} s" if seconds is not None else "time not measured"
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = [
        "# Mutation testing report",
        "",
        f"Produced by `{command}` at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on commit "
        f"`{head or '?'}` (plus the working tree), mutmut {version}, {os.cpu_count()} cores, "
        f"{took}. How to read it and how to mark an equivalent mutant: docs/development.md, "
        '"Mutation testing".',
        "",
        f"Score = killed / (mutants - equivalent); a timeout counts as killed. Target: at "
        f"least {_pct(TARGET)} in every module.",
        "",
        "| module | mutants | killed | timeout | survived | no tests | equivalent | score | "
        "target | not scored | not run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scores.values():
        total = sum(s.counts.values())
        c = s.counts
        survived = total - s.killed - c["no tests"] - c["equivalent"]  # suspicious too
        out.append(
            f"| `{s.module}` | {total} | {c['killed'] + c['caught by type check']} "
            f"| {c['timeout']} | {survived} | {c['no tests']} | {c['equivalent']} "
            f"| {_pct(s.score) if s.scored else '—'} "
            f"| {('met' if s.score >= TARGET else '**missed**') if s.scored else '—'} "
            f"| {s.not_scored} | {s.not_run} |"
        )
    limited = {m: f for m, f in SCOPE.items() if f is not None}
    for module, functions in limited.items():
        out += [
            "",
            f"`{module}`: only {', '.join(f'`{f}`' for f in functions)} are scored; the "
            'rest (store transitions) is covered by integration tests ("not scored").',
        ]

    survivors = [m for m in mutants if m.diff and m.reason is None]
    out += ["", f"## Surviving mutants ({len(survivors)})", ""]
    if not survivors:
        out.append("None.")
    for m in survivors:
        out += [f"- `{m.name}` ({m.status}) in `{m.function}`:", "", "  ```diff"]
        out += [f"  {line}" for line in _hunk(m.diff)]
        out += ["  ```"]

    equivalent = [m for m in mutants if m.reason is not None]
    out += ["", f"## Equivalent mutants ({len(equivalent)}, from `mutation/equivalent.toml`)", ""]
    for m in equivalent:
        old, new = m.change
        out.append(f"- `{m.module}` `{m.function}`: `{old}` → `{new}` — {m.reason}")
    if stale:
        out += ["", "## Stale allow-list entries (no surviving mutant matches them)", ""]
        out += [
            f"- `{e['module']}` `{e['function']}`: `{e['original']}` → `{e['mutant']}`"
            for e in stale
        ]
    REPORT.write_text("\n".join(out) + "\n")


def _hunk(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if not line.startswith(("#", "---", "+++"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--keep", action="store_true", help="reuse mutants/ (mutmut re-runs what changed)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from mutants/ only"
    )
    parser.add_argument("globs", nargs="*", help="only these mutants, e.g. 'worker.chunking.*'")
    args = parser.parse_args()
    command = (
        "make mutation" if not sys.argv[1:] else "python -m mutation.run " + " ".join(sys.argv[1:])
    )

    started = time.monotonic()
    if not args.report_only:
        if not args.keep:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        run = subprocess.run(
            [*MUTMUT, "run", "--max-children", str(args.max_children), *args.globs], cwd=ROOT
        )
        if run.returncode != 0:
            print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
            return run.returncode
    seconds = None if args.report_only else time.monotonic() - started

    mutants = collect()
    scores, stale = score(mutants, load_allow_list())
    write_report(mutants, scores, stale, command, seconds)
    print(f"\nreport: {REPORT.relative_to(ROOT)}")
    missed = [s for s in scores.values() if sum(s.counts.values()) and s.score < TARGET]
    for s in scores.values():
        print(f"  {s.module:28} {_pct(s.score):>8}  ({s.killed}/{s.scored})")
    if missed:
        print(f"under the {_pct(TARGET)} target: {', '.join(s.module for s in missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
