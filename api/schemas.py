"""Response models: they document the API (OpenAPI at /docs) with examples."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.dataset import lifecycle


class Promotion(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118",
                    "price": 60.683466,
                    "expiration_date": "2018-08-04 05:32:31 +0200 CEST",
                }
            ]
        }
    )
    id: str
    price: float
    expiration_date: str = Field(description="Exactly as written in the file")


class Problem(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "a clear sentence"}]})
    detail: Any


class ActiveDatasetOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 7,
                    "rows": 1000000,
                    "job_id": "5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10",
                    "activated_at": "2026-11-25T14:00:00Z",
                    "buckets": 10000,
                }
            ]
        }
    )
    version: int
    rows: int
    job_id: str | None
    activated_at: str | None
    buckets: int | None = Field(
        None, description="Bucket documents the rows are stored in (null: one document per row)"
    )


class DatasetVersionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 7,
                    "state": "ready",
                    "rows": 1000000,
                    "job_id": "5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10",
                    "created_at": "2026-11-25T13:59:00Z",
                    "activated_at": "2026-11-25T14:00:00Z",
                    "buckets": 10000,
                    "active": True,
                }
            ]
        }
    )
    version: int
    state: lifecycle.VersionState = Field(description="See docs/lifecycle.md")
    rows: int | None
    job_id: str | None
    created_at: str | None
    activated_at: str | None = Field(description="Last time it went live, if ever")
    buckets: int | None = Field(
        None, description="Bucket documents the rows are stored in (null: one document per row)"
    )
    active: bool


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {"store": "ok", "cache": "ok", "breaker": "closed"},
                }
            ]
        }
    )
    status: str
    checks: dict[str, str]


class JobAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10",
                    "status": "queued",
                    "status_url": "/jobs/5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10",
                }
            ]
        }
    )
    job_id: str
    status: lifecycle.JobStatus
    status_url: str


class Reject(BaseModel):
    line: int
    reason: str


class JobStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5f0c2a3e9b8d4c1f8e7a6b5c4d3e2f10",
                    "status": "succeeded",
                    "phase": "done",
                    "source": "upload",
                    "bytes_total": 2060000,
                    "chunks_total": 1,
                    "chunks_done": 1,
                    "partitions_total": 8,
                    "partitions_done": 8,
                    "rows_loaded": 20000,
                    "rows_rejected": 1,
                    "duplicates": 0,
                    "rejects": [{"line": 7, "reason": "price '-1' is negative"}],
                    "dataset_version": 3,
                    "superseded": False,
                    "error": None,
                    "created_at": "2026-11-25T14:00:00Z",
                    "started_at": "2026-11-25T14:00:01Z",
                    "finished_at": "2026-11-25T14:00:04Z",
                    "rows_per_s": 7407.4,
                    "eta_s": None,
                    "phase_durations_s": {
                        "queued": 0.8,
                        "splitting": 0.1,
                        "loading": 1.2,
                        "writing": 1.5,
                        "activating": 0.4,
                        "total": 4.0,
                    },
                }
            ]
        }
    )
    job_id: str
    status: lifecycle.JobStatus = Field(description="See docs/lifecycle.md")
    phase: lifecycle.JobPhase = Field(
        description="loading: chunks parsed into run files; writing: partitions written as "
        "bucket documents"
    )
    source: str | None = None
    bytes_total: int | None = None
    chunks_total: int | None = None
    chunks_done: int = 0
    partitions_total: int | None = Field(None, description="Partitions to write (after loading)")
    partitions_done: int = 0
    rows_loaded: int = Field(0, description="Valid rows read (including overridden duplicates)")
    rows_rejected: int = Field(0, description="Invalid rows, all of them")
    duplicates: int = Field(0, description="Rows overridden by a later row with the same id")
    rejects: list[Reject] | None = Field(
        None,
        description="Preview: the first 100 invalid rows; every one is in "
        "GET /jobs/{job_id}/rejects (CSV)",
    )
    rejects_by_reason: list[dict[str, Any]] | None = Field(
        None,
        description="Once the job has ended: every invalid row counted by kind of reason "
        "({reason, rows}, most frequent first; values quoted in a reason shown as '…'). The "
        "CSV report lists at most REJECT_REPORT_MAX_LINES rows in full",
    )
    dataset_version: int | None = None
    superseded: bool = Field(False, description="Loaded, but a newer upload was already live")
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    original_name: str | None = Field(
        None,
        description="The file's name as sent (?name=, the multipart file name, a raw body's "
        "Content-Disposition) or in the drop folder; its last path component only",
    )
    rows_per_s: float | None = Field(
        None,
        description="Rows loaded per second of loading and writing: so far while they run, "
        "their average once they are over; null before loading starts",
    )
    eta_s: float | None = Field(
        None,
        description="While loading (writing): estimated seconds until every chunk (partition) "
        "is done, if the remaining ones go as fast as the finished ones; null before the first "
        "one ends and outside those phases",
    )
    phase_durations_s: dict[str, float] | None = Field(
        None,
        description="Once the job has ended: seconds spent in each phase it reached "
        "(queued, splitting, loading, writing, activating) and in total",
    )
