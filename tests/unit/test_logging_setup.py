import json
import logging
import sys

from shared.infra.log_context import ContextFilter, job_id_var, request_id_var
from shared.infra.logging_setup import TEXT_FORMAT, JsonFormatter, TextFormatter


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("promo.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    ContextFilter().filter(record)
    return record


def test_one_json_object_per_line_with_the_fields_shippers_need() -> None:
    line = JsonFormatter().format(_record("job %s: %d rows\nsecond line", "abc", 3))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "promo.test"
    assert entry["message"] == "job abc: 3 rows\nsecond line"
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    assert "request_id" not in entry and "job_id" not in entry


def test_request_and_job_ids_come_from_the_context() -> None:
    r_token, j_token = request_id_var.set("req-1"), job_id_var.set("job-9")
    try:
        entry = json.loads(JsonFormatter().format(_record("hello")))
        text = TextFormatter(TEXT_FORMAT).format(_record("hello"))
    finally:
        request_id_var.reset(r_token)
        job_id_var.reset(j_token)
    assert (entry["request_id"], entry["job_id"]) == ("req-1", "job-9")
    assert text.endswith("hello [request_id=req-1 job_id=job-9]")
    assert "request_id" not in json.loads(JsonFormatter().format(_record("after")))


def test_exceptions_are_one_field() -> None:
    entry = json.loads(JsonFormatter().format(_record("failed", exc=True)))
    assert "ValueError: boom" in entry["error"] and "Traceback" in entry["error"]


def test_passwords_in_urls_never_reach_the_log() -> None:
    msg = "cannot reach mongodb://app:s3cret@db:27017/?authSource=admin and redis://:pw@r:6379/0"
    for out in (JsonFormatter().format(_record(msg)), TextFormatter().format(_record(msg))):
        assert "s3cret" not in out and ":pw@" not in out
        assert "mongodb://app:***@db:27017" in out and "redis://:***@r:6379" in out
