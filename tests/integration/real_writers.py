"""The dataset of the real-writers test and what each export tool writes from it.

Every writer gets the same rows (``SOURCE``): ids in mixed case, prices with two decimals,
UTC instants with and without a fraction, hours before 10 (one-digit hours in LibreOffice).
The tools that install from the project's own dependencies (pandas, polars, DuckDB, Python's
csv module, the sqlite3 shell, a PostgreSQL server) write their files at test time; the others
are committed samples in ``writers/`` (see its README), written from the same rows.
"""

from __future__ import annotations

import csv
import io
import random
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

SAMPLES = Path(__file__).with_name("writers")
Row = tuple[str, float, datetime]


def _source(rows: int = 24) -> list[Row]:
    rng = random.Random(2027)
    out: list[Row] = []
    start = datetime(2027, 12, 1, tzinfo=UTC)
    for i in range(rows):
        when = start + timedelta(seconds=rng.randrange(0, 400 * 86400))
        if i % 2:  # half with microseconds
            when = when.replace(microsecond=rng.randrange(1, 1_000_000))
        if i % 3 == 0:  # some before 10:00
            when = when.replace(hour=rng.randrange(0, 10))
        out.append(
            (f"{'Row' if i % 2 else 'row'}-{i:03d}_x", rng.randrange(0, 100_000) / 100, when)
        )
    return out


SOURCE = _source()
HEADER = ["id", "price", "expiration_date"]


def _frame_columns() -> dict[str, list[object]]:
    return {
        "id": [r[0] for r in SOURCE],
        "price": [r[1] for r in SOURCE],
        "expiration_date": [r[2] for r in SOURCE],
    }


def pandas_aware(_: Path) -> bytes:
    import pandas as pd

    return pd.DataFrame(_frame_columns()).to_csv(index=False).encode()


def pandas_naive(_: Path) -> bytes:
    import pandas as pd

    frame = pd.DataFrame(_frame_columns())
    frame["expiration_date"] = frame["expiration_date"].dt.tz_localize(None)
    return frame.to_csv(index=False).encode()


def polars_aware(_: Path) -> bytes:
    import polars as pl

    return pl.DataFrame(_frame_columns()).write_csv().encode()


def polars_naive(_: Path) -> bytes:
    import polars as pl

    frame = pl.DataFrame(_frame_columns())
    return (
        frame.with_columns(pl.col("expiration_date").dt.replace_time_zone(None))
        .write_csv()
        .encode()
    )


def _duckdb(zone: str, tmp: Path) -> bytes:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{zone}'")
    con.execute("CREATE TABLE t (id VARCHAR, price DOUBLE, expiration_date TIMESTAMPTZ)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [list(r) for r in SOURCE])
    out = tmp / f"duckdb-{zone.replace('/', '-')}.csv"
    con.execute(f"COPY t TO '{out}' (HEADER)")
    con.close()
    return out.read_bytes()


def duckdb_utc(tmp: Path) -> bytes:
    return _duckdb("UTC", tmp)


def duckdb_sao_paulo(tmp: Path) -> bytes:
    return _duckdb("America/Sao_Paulo", tmp)  # '-03': an hour-only offset that is not zero


def _python_csv(quoting: int, date: Callable[[datetime], str], **kw: object) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, quoting=quoting, **kw)  # type: ignore[arg-type]
    writer.writerow(HEADER)
    writer.writerows((r[0], r[1], date(r[2])) for r in SOURCE)
    return buf.getvalue().encode()


def csv_minimal(_: Path) -> bytes:
    return _python_csv(csv.QUOTE_MINIMAL, datetime.isoformat)  # '2027-12-01T07:38:51+00:00'


def csv_all(_: Path) -> bytes:
    return _python_csv(csv.QUOTE_ALL, str)  # str(datetime): '2027-12-01 07:38:51.5+00:00'


def csv_nonnumeric(_: Path) -> bytes:
    return _python_csv(csv.QUOTE_NONNUMERIC, lambda d: d.isoformat(sep=" "))


def csv_none(_: Path) -> bytes:
    return _python_csv(
        csv.QUOTE_NONE, lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f%z"), escapechar="\\"
    )


def sqlite3_shell(tmp: Path) -> bytes:
    db = tmp / "promotions.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (id TEXT, price REAL, expiration_date TEXT)")
        con.executemany(
            "INSERT INTO t VALUES (?, ?, datetime(?, 'unixepoch'))",
            [(r[0], r[1], int(r[2].timestamp())) for r in SOURCE],
        )
    con.close()
    return subprocess.run(
        ["sqlite3", "-csv", "-header", str(db), "SELECT id, price, expiration_date FROM t"],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout


# Writers run at test time: (name, writer, fraction kept: digits of the second's fraction).
GENERATED: list[tuple[str, Callable[[Path], bytes], int]] = [
    ("pandas tz-aware", pandas_aware, 6),
    ("pandas naive", pandas_naive, 6),
    ("polars tz-aware", polars_aware, 6),
    ("polars naive", polars_naive, 6),
    ("DuckDB COPY, UTC", duckdb_utc, 6),
    ("DuckDB COPY, America/Sao_Paulo", duckdb_sao_paulo, 6),
    ("csv QUOTE_MINIMAL", csv_minimal, 6),
    ("csv QUOTE_ALL", csv_all, 6),
    ("csv QUOTE_NONNUMERIC", csv_nonnumeric, 6),
    ("csv QUOTE_NONE", csv_none, 6),
    ("sqlite3 shell -csv", sqlite3_shell, 0),
]

# Committed samples: (file in writers/, fraction digits the tool keeps).
COMMITTED = [
    ("go-encoding-csv-time-string.csv", 6),
    ("ruby-csv-time-to_s.csv", 0),
    ("r-write-csv.csv", 0),
    ("node-csv-stringify-toisostring.csv", 3),
    ("libreoffice-xlsx-to-csv.csv", 0),
    ("spreadsheet-bom-crlf.csv", 0),
]


def truncated(when: datetime, digits: int) -> datetime:
    """``when`` as a tool keeping ``digits`` of the second's fraction writes it."""
    keep = 10 ** (6 - digits)
    return when.replace(microsecond=when.microsecond // keep * keep)


def make_samples() -> None:
    """Write the committed samples in the forms each tool writes (``writers/README.md``)."""
    rows = [(r[0], f"{r[1]:g}" if r[1] != int(r[1]) else f"{r[1]:.0f}", r[2]) for r in SOURCE]
    cet = timedelta(hours=1)

    def go(d: datetime, i: int) -> str:  # time.Time.String(): fraction trimmed, zone name
        frac = f".{d.microsecond:06d}".rstrip("0") if d.microsecond else ""
        if i % 4 == 1:
            local = d + cet
            return f"{local:%Y-%m-%d %H:%M:%S}{frac} +0100 CET"
        return f"{d:%Y-%m-%d %H:%M:%S}{frac} +0000 UTC"

    def ruby(d: datetime, i: int) -> str:  # Time#to_s: 'UTC' for UTC, else the offset
        return f"{d + cet:%Y-%m-%d %H:%M:%S} +0100" if i % 4 == 1 else f"{d:%Y-%m-%d %H:%M:%S} UTC"

    def node(d: datetime, _: int) -> str:  # Date#toISOString(): milliseconds, 'Z'
        return f"{d:%Y-%m-%dT%H:%M:%S}.{d.microsecond // 1000:03d}Z"

    lines = {
        "go-encoding-csv-time-string.csv": ["id,price,expiration_date"]
        + [f"{r[0]},{r[1]},{go(r[2], i)}" for i, r in enumerate(rows)],
        "ruby-csv-time-to_s.csv": ["id,price,expiration_date"]
        + [f"{r[0]},{r[1]},{ruby(r[2], i)}" for i, r in enumerate(rows)],
        "r-write-csv.csv": ['"id","price","expiration_date"']
        + [f'"{r[0]}",{r[1]},"{r[2]:%Y-%m-%d %H:%M:%S}"' for r in rows],
        "node-csv-stringify-toisostring.csv": ["id,price,expiration_date"]
        + [f"{r[0]},{r[1]},{node(r[2], i)}" for i, r in enumerate(rows)],
        "libreoffice-xlsx-to-csv.csv": ['"id","price","expiration_date"']
        + [f'"{r[0]}",{r[1]},{r[2]:%Y-%m-%d} {r[2].hour}:{r[2]:%M:%S}' for r in rows],
    }
    for name, text in lines.items():
        (SAMPLES / name).write_text("\n".join(text) + "\n", newline="")
    sheet = "\r\n".join(
        ["id,price,expiration_date"] + [f"{r[0]},{r[1]},{r[2]:%Y-%m-%d %H:%M:%S}" for r in rows]
    )
    (SAMPLES / "spreadsheet-bom-crlf.csv").write_bytes(b"\xef\xbb\xbf" + (sheet + "\r\n").encode())


if __name__ == "__main__":
    make_samples()


def _pg_bin() -> Path:
    """Debian's newest installed server binaries (postgresql-15 on bookworm)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


class PostgresServer:
    """A PostgreSQL server of its own (Debian's package): a temporary cluster on a free port
    with its socket in its own directory, never the machine's cluster. initdb refuses to run
    as root, so as root the server runs as the ``postgres`` system user."""

    def __init__(self, root: Path, port: int) -> None:
        import os
        import pwd
        import shutil

        self.root, self.port = root, port
        self.data, self.socket = root / "data", root / "socket"
        self.socket.mkdir(parents=True)
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (root, self.socket):
                shutil.chown(path, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, input_text: str | None = None) -> str:
        done = subprocess.run(
            [*self.as_user, *args],
            capture_output=True,
            text=True,
            input=input_text,
            timeout=60,
            cwd="/",
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> None:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "pg", "--no-sync"
        )
        options = f"-p {self.port} -k {self.socket} -c listen_addresses='' -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.root / "log"),
            "start",
        )

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def psql(self, sql: str) -> bytes:
        return self._run(
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket),
            "-p",
            str(self.port),
            "-U",
            "pg",
            "-d",
            "postgres",
            input_text=sql,
        ).encode()


def postgres_copy(server: PostgresServer, zone: str) -> bytes:
    """``COPY ... TO STDOUT WITH CSV HEADER`` of a timestamptz column in session zone ``zone``."""
    values = ",\n".join(f"('{r[0]}', {r[1]!r}, '{r[2].isoformat()}')" for r in SOURCE)
    return server.psql(
        f"SET TimeZone = '{zone}';\n"
        "CREATE TEMP TABLE t (id text, price double precision, expiration_date timestamptz);\n"
        f"INSERT INTO t VALUES {values};\n"
        "COPY t TO STDOUT WITH (FORMAT csv, HEADER);\n"
    )
