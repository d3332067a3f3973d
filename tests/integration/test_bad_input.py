"""Malformed input, end to end: every bad file gets a specific reason and never costs the
dataset that is serving. Real API (in-process), real Celery workers, real store."""

from __future__ import annotations

import gzip
import io
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from httpx import Response

from api.main import create_app
from shared.settings import MiB, Settings
from tests.helpers import StateReset, wait_for, wait_job

pytestmark = pytest.mark.usefixtures("worker")

UPLOAD_LIMIT = 12 * MiB
STORED_LIMIT = 16 * MiB
DATE = "2018-08-04 05:32:31 +0200 CEST"


def _id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def rows(n: int, make: Callable[[int], str] = lambda i: f"{_id(i)},{i}.5,{DATE}") -> list[str]:
    return [make(i) for i in range(n)]


def text(lines: list[str], end: str = "\n") -> bytes:
    return "".join(line + end for line in lines).encode()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("promotions.csv", text(rows(50)))
    return buf.getvalue()


BASELINE = rows(300, lambda i: f"{_id(10_000 + i)},1.25,{DATE}")
BASELINE_ID = _id(10_000)


@pytest.fixture(scope="module")
def client(services: None, settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(
        update={"max_upload_bytes": UPLOAD_LIMIT, "max_decompressed_bytes": STORED_LIMIT}
    )
    with TestClient(create_app(limited)) as c:
        yield c


@pytest.fixture
def serving(
    client: TestClient,
    mongo_db: Any,
    redis_client: redis.Redis,
    settings: Settings,
    reset_state: StateReset,
) -> dict[str, Any]:
    """The baseline dataset is live (loaded again only if an earlier test replaced it)."""
    active = client.get("/datasets/active")
    if (
        active.status_code == 200
        and active.json()["rows"] == len(BASELINE)
        and client.get(f"/promotions/{BASELINE_ID}").json().get("price") == 1.25
    ):
        return dict(active.json())
    reset_state(mongo_db, redis_client, settings)
    r = client.post("/add-promotions/", files={"file": ("b.csv", text(BASELINE))})
    assert wait_job(client, r.json()["job_id"])["status"] == "succeeded"
    wait_for_active(client, len(BASELINE))
    # The job's clean-up (a worker task after it succeeded) removes its upload: tests check
    # that refused uploads leave nothing there, so it must be gone first.
    wait_for(lambda: not any(settings.uploads_dir.iterdir()), 30)
    return dict(client.get("/datasets/active").json())


def wait_for_active(client: TestClient, rows_: int) -> None:
    wait_for(lambda: client.get("/datasets/active").json().get("rows") == rows_, 5)


def assert_still_serving(client: TestClient, before: dict[str, Any]) -> None:
    assert client.get("/datasets/active").json() == before
    r = client.get(f"/promotions/{BASELINE_ID}")
    assert r.status_code == 200 and r.json()["price"] == 1.25


# --- refused at the door: nothing stored, no job -----------------------------------------

MULTIPART = "multipart/form-data; boundary=XyZ"


def _part(name: str, body: bytes) -> bytes:
    return (
        (
            f'--XyZ\r\nContent-Disposition: form-data; name="{name}"; filename="p.csv"\r\n\r\n'
        ).encode()
        + body
        + b"\r\n"
    )


REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("empty-file", {"files": {"file": ("p.csv", b"")}}, 400, "the uploaded file is empty"),
    (
        "empty-raw-body",
        {"content": b"", "headers": {"Content-Type": "text/csv"}},
        400,
        "the uploaded file is empty",
    ),
    (
        "truncated-gzip",
        {"files": {"file": ("p.csv.gz", gzip.compress(text(rows(500)))[:-30])}},
        400,
        "the gzip data is truncated",
    ),
    (
        "corrupt-gzip",
        {"files": {"file": ("p.csv.gz", b"\x1f\x8b" + b"not really gzip" * 10)}},
        400,
        "the gzip data is corrupt",
    ),
    (
        "gzip-bomb",
        {"files": {"file": ("bomb.gz", gzip.compress(b"0" * (STORED_LIMIT + MiB)))}},
        413,
        f"the decompressed file is larger than the limit of {STORED_LIMIT} bytes",
    ),
    (
        "larger-than-limit",
        {"content": b"x" * (UPLOAD_LIMIT + 1), "headers": {"Content-Type": "text/csv"}},
        413,
        f"larger than the limit of {UPLOAD_LIMIT} bytes",
    ),
    (
        "wrong-field-name",
        {"files": {"upload": ("p.csv", text(rows(5)))}},
        422,
        "multipart field 'file' is required; the request had 'upload'",
    ),
    (
        "json-body",
        {"json": {"file": "p.csv"}},
        415,
        "send the CSV as multipart/form-data in a field named 'file'",
    ),
    (
        "multipart-without-closing-boundary",
        {"content": _part("file", text(rows(5))), "headers": {"Content-Type": MULTIPART}},
        400,
        "the multipart body is incomplete",
    ),
    (
        "two-files",
        {
            "content": _part("file", text(rows(5))) + _part("file", text(rows(5))) + b"--XyZ--\r\n",
            "headers": {"Content-Type": MULTIPART},
        },
        422,
        "send exactly one file per upload",
    ),
    (
        "multipart-without-boundary",
        {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "has no boundary",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_refused_uploads_say_why_and_keep_nothing(
    client: TestClient,
    serving: dict[str, Any],
    mongo_db: Any,
    settings: Settings,
    request_kwargs: dict[str, Any],
    status: int,
    detail: str,
) -> None:
    jobs_before = mongo_db["jobs"].count_documents({})
    r: Response = client.post("/add-promotions/", **request_kwargs)
    assert r.status_code == status, r.text
    assert detail in r.json()["detail"]
    assert mongo_db["jobs"].count_documents({}) == jobs_before
    assert list(settings.uploads_dir.iterdir()) == []
    assert_still_serving(client, serving)


# --- stored, then failed by the worker with a reason; old dataset keeps serving ----------

FAILED: list[tuple[str, bytes, str]] = [
    ("header-only", b"id,price,expiration_date\n", "the file has no data rows"),
    ("blank-lines-only", b"\n\n  \r\n\n", "the file has no data rows"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "binary (it contains NUL"),
    ("zip", _zip(), "binary (it contains NUL"),
    ("utf16-with-bom", "\n".join(rows(20)).encode("utf-16"), "UTF-16 encoded"),
    ("utf16-without-bom", "\n".join(rows(20)).encode("utf-16-le"), "binary"),
    ("gzip-inside-gzip", gzip.compress(gzip.compress(text(rows(20)))), "gzip-compressed inside"),
    (
        "invalid-utf8",
        text(rows(50, lambda i: f"{_id(i)},1.5,{DATE}")).replace(b"CEST", b"CE\xe9T"),
        "line is not valid UTF-8",
    ),
    ("two-fields", text(rows(50, lambda i: f"{_id(i)},1.5")), "expected 3 fields"),
    ("four-fields", text(rows(50, lambda i: f"{_id(i)},1.5,{DATE},x")), "found 4"),
    ("semicolons", text(rows(50, lambda i: f"{_id(i)};1.5;{DATE}")), "found 1"),
    (
        "embedded-comma",
        text(rows(50, lambda i: f'"{_id(i)},x",1.5,{DATE}')),
        "characters other than A-Z",
    ),
    (
        "embedded-newline",
        text(rows(50, lambda i: f'"{_id(i)}\nx",1.5,{DATE}')),
        "malformed quoting in field 1: the quote is not closed on this line",
    ),
    (
        "stray-quote",
        text(rows(50, lambda i: f'{_id(i)},1.5",{DATE}')),
        "malformed quoting in field 2: a '\"' inside an unquoted field",
    ),
    (
        "text-after-closing-quote",
        text(rows(50, lambda i: f'"{_id(i)}"x,1.5,{DATE}')),
        "malformed quoting in field 1: text after the closing quote",
    ),
    ("nan-price", text(rows(50, lambda i: f"{_id(i)},NaN,{DATE}")), "not a finite number"),
    ("inf-price", text(rows(50, lambda i: f"{_id(i)},inf,{DATE}")), "not a finite number"),
    ("negative-price", text(rows(50, lambda i: f"{_id(i)},-1,{DATE}")), "is negative"),
    ("huge-price", text(rows(50, lambda i: f"{_id(i)},1e400,{DATE}")), "is out of range"),
    ("empty-price", text(rows(50, lambda i: f"{_id(i)},,{DATE}")), "price is empty"),
    ("text-price", text(rows(50, lambda i: f"{_id(i)},cheap,{DATE}")), "not a decimal number"),
    (
        "impossible-date",
        text(rows(50, lambda i: f"{_id(i)},1,2018-02-30 05:32:31 +0200 CEST")),
        "is not a calendar date",
    ),
    (
        "wrong-date-format",
        text(rows(50, lambda i: f"{_id(i)},1,04/08/2018 05:32")),
        "is not 'YYYY-MM-DD[ T]H:MM:SS[.fraction][zone]'",
    ),
    (
        "date-without-time",
        text(rows(50, lambda i: f"{_id(i)},1,2018-08-04")),
        "is not 'YYYY-MM-DD[ T]H:MM:SS[.fraction][zone]'",
    ),
    (
        "bad-offset",
        text(rows(50, lambda i: f"{_id(i)},1,2018-08-04 05:32:31 +9900 X")),
        "has an invalid offset",
    ),
    ("empty-id", text(rows(50, lambda i: f",1,{DATE}")), "id is empty"),
    ("long-id", text(rows(50, lambda i: f"{'a' * 65},1,{DATE}")), "longer than 64 characters"),
    ("id-with-space", text(rows(50, lambda i: f"a {i},1,{DATE}")), "characters other than"),
    ("id-with-slash", text(rows(50, lambda i: f"a/{i},1,{DATE}")), "characters other than"),
    ("id-dot-dot", text(rows(50, lambda i: f"..{i},1,{DATE}")), "characters other than"),
    ("one-10mb-line", b"a" * (10 * MiB) + b"\n", "line is too long (10485760 characters"),
    (
        "too-many-bad-rows",
        text(rows(2000, lambda i: f"{_id(i)},{'-' if i % 20 == 0 else ''}1.5,{DATE}")),
        "100 of 2000 rows (5.00%) are invalid, more than the allowed 1.00%",
    ),
]


@pytest.mark.parametrize(("content", "reason"), [pytest.param(*c[1:], id=c[0]) for c in FAILED])
def test_bad_files_fail_with_a_specific_reason(
    client: TestClient, serving: dict[str, Any], settings: Settings, content: bytes, reason: str
) -> None:
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    assert reason in job["error"], job["error"]
    assert job["dataset_version"] is None
    assert_still_serving(client, serving)


# --- acceptable files load; odd but valid input is handled --------------------------------

LONG_LINE_FILE = text([*rows(1500)[:700], "a" * (10 * MiB), *rows(1500)[700:]])
ACCEPTED: list[tuple[str, bytes, dict[str, Any]]] = [
    ("no-final-newline", text(rows(100)).rstrip(b"\n"), {"rows_loaded": 100}),
    ("crlf", text(rows(100), end="\r\n"), {"rows_loaded": 100}),
    (
        "mixed-endings",
        b"".join(line.encode() + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(rows(99))),
        {"rows_loaded": 99},
    ),
    (
        "bom-and-header",
        b"\xef\xbb\xbf" + text(["ID,Price,Expiration_Date", *rows(100)]),
        {"rows_loaded": 100, "rows_rejected": 0},
    ),
    (
        "spaces-and-blank-lines",
        text([f"  {r.replace(',', ' , ')}  " for r in rows(100)] + ["", "   "]),
        {"rows_loaded": 100},
    ),
    (
        "many-duplicates",
        text(rows(3000, lambda i: f"{_id(i % 10)},{i}.5,{DATE}")),
        {"rows_loaded": 3000, "duplicates": 2990},
    ),
    (
        "a-10mb-line-among-good-rows",
        LONG_LINE_FILE,
        {"rows_loaded": 1500, "rows_rejected": 1, "rejects": [701]},
    ),
    (
        "few-bad-rows-under-threshold",
        text(rows(1000, lambda i: f"{_id(i)},{'x' if i % 250 == 7 else ''}2.5,{DATE}")),
        {"rows_loaded": 996, "rows_rejected": 4, "rejects": [8, 258, 508, 758]},
    ),
    (
        "gzip-upload",
        gzip.compress(text(rows(500))),
        {"rows_loaded": 500},
    ),
    (
        "every-field-quoted",
        text(rows(100, lambda i: f'"{_id(i)}","{i}.5","{DATE}"'), end="\r\n"),
        {"rows_loaded": 100, "rows_rejected": 0},
    ),
    (
        "no-time-zone",
        text(rows(100, lambda i: f"{_id(i)},9.68,2022-06-04 06:01:20")),
        {"rows_loaded": 100, "rows_rejected": 0},
    ),
]


@pytest.mark.parametrize(("content", "want"), [pytest.param(*c[1:], id=c[0]) for c in ACCEPTED])
def test_odd_but_acceptable_files_load(
    client: TestClient, content: bytes, want: dict[str, Any]
) -> None:
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    for key, value in want.items():
        got = [x["line"] for x in job[key]] if key == "rejects" else job[key]
        assert got == value, key
    wait_for_active(client, job["rows_loaded"] - job["duplicates"])
    last = 2 if want.get("duplicates") else 1
    r = client.get(f"/promotions/{_id(last - 1).upper()}")
    assert r.status_code == 200, r.text
    if want.get("duplicates"):
        assert r.json()["price"] == 2991.5  # the row nearest the end of the file wins
