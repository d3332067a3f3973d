"""One typed settings object for the API, the worker and the tools.

Precedence (lowest to highest): defaults here < ``config.json`` < ``.env`` < environment.
Secrets are ``SecretStr`` so that printing or logging the settings never shows them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MiB = 1024 * 1024
GiB = 1024 * MiB

# Values that ship in the repository for development hold this; production refuses them
# (in any case: "Change-Me-x" too).
PLACEHOLDER_PREFIX = "change-me"
# Production's floor for secrets: a token is a random string (`openssl rand -hex 32`), a
# password at least a long passphrase.
MIN_TOKEN_CHARS = 32
MIN_PASSWORD_CHARS = 12

# What each process of the stack talks to, hence which secrets production requires of it
# (each compose container gets only the secrets its role uses).
Role = Literal["all", "api", "worker", "beat", "flower"]
_ROLE_NEEDS: dict[str, frozenset[str]] = {
    "api": frozenset({"write_token", "mongo", "cache", "broker"}),
    "worker": frozenset({"mongo", "cache", "broker"}),
    "beat": frozenset({"broker"}),
    "flower": frozenset({"broker", "flower"}),
}
_ROLE_NEEDS["all"] = frozenset().union(*_ROLE_NEEDS.values())


def _is_placeholder(value: str) -> bool:
    return PLACEHOLDER_PREFIX in value.lower()


def _secret_problem(label: str, value: str, min_chars: int) -> str | None:
    if _is_placeholder(value):
        return f"{label} is a '{PLACEHOLDER_PREFIX}...' placeholder"
    if len(value) < min_chars:
        return f"{label} is shorter than {min_chars} characters"
    return None


def _url_password_problem(label: str, url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.password:
        return f"{label} has no password (the URL needs user:password@ or :password@)"
    return _secret_problem(f"the password in {label}", parts.password, MIN_PASSWORD_CHARS)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # A refused value (a secret, in a production check) never appears in the error.
        hide_input_in_errors=True,
    )

    # HTTP API
    app_host: str = "127.0.0.1"
    app_port: int = 1321
    api_workers: int = Field(default=1, ge=1)
    # A request's headers must arrive within this (api/http_protocol.py; the edge in front
    # has its own, shorter or equal, client_header_timeout).
    http_header_timeout_s: float = Field(default=15.0, gt=0)

    # MongoDB (or the wire-compatible dev server)
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    mongo_db: str = "vervedb"
    mongo_timeout_ms: int = Field(default=2000, ge=100)
    # Deadlines of API requests that touch the store (shared/deadlines.py, through the
    # driver's client-side operation timeout): the whole request (cache, single-flight wait,
    # store read, the driver's retry) answers within it, or 503 with Retry-After.
    lookup_timeout_ms: int = Field(default=300, ge=10)
    job_status_timeout_ms: int = Field(default=2000, ge=10)
    datasets_timeout_ms: int = Field(default=2000, ge=10)
    upload_record_timeout_ms: int = Field(default=5000, ge=10)
    # Circuit breaker in front of the store, per API process (api/store_breaker.py): opens
    # after this many store calls in a row failed or ran out of time; store-bound requests
    # then get 503 at once (cache hits still answer) and after breaker_open_ms one probe
    # goes through: its success closes the breaker. False: every request tries the store.
    store_breaker: bool = True
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_ms: int = Field(default=500, ge=10)
    # Workers and the finalizer: no socket read waits longer than this, so a store call
    # (with the driver's one retry) ends within about twice it; the task's retry policy
    # (TASK_MAX_RETRIES) takes it from there. Was 120 s.
    task_store_timeout_s: float = Field(default=30.0, gt=0)
    # Sharded cluster (through mongos): shard each new version collection on hashed _id.
    shard_version_collections: bool = False

    # Redis: the read cache and the pointer-change channel; the broker may be another instance.
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/1")
    redis_timeout_s: float = Field(default=0.5, gt=0)

    # Shared volume: uploads land here and workers read them from here.
    data_dir: Path = Path("data/shared")

    # Ingestion
    chunk_size_bytes: int = Field(default=32 * MiB, ge=1)
    # Rows per insert: a partition task writes bucket documents holding about this many rows
    # per insert_many. Small, so a lookup waits behind at most a short insert on a store that
    # serves one request at a time (docs/decisions/bucket-inserts.md: 500 against 250, 1000
    # and 5000, measured).
    insert_batch_rows: int = Field(default=500, ge=1)
    # Bucketed layout (docs/architecture.md): about this many rows per bucket document, and
    # at most this many rows per partition (what one partition task holds in memory, ~200
    # bytes a row), with at least min_partitions partitions so every worker process writes.
    rows_per_bucket: int = Field(default=100, ge=1, le=10_000)
    rows_per_partition: int = Field(default=250_000, ge=1000)
    min_partitions: int = Field(default=8, ge=1)
    # The shuffle's fixed hash space (a power of two): map tasks write each row into one of
    # this many slices and record exact counts per slice; reduce tasks are then made of
    # whole slices up to rows_per_partition rows (docs/scaling.md). More slices: finer
    # reduce tasks for huge files, a bigger directory per run file (40 bytes a slice).
    shuffle_slices: int = Field(default=4096, ge=1, le=1 << 20)
    reject_ratio: float = Field(default=0.01, ge=0, le=1)
    # Shrink guard (0 = off: every valid file replaces the whole dataset). A complete file
    # with fewer than this share of the active dataset's rows is held, not switched to.
    min_rows_ratio: float = Field(default=0, ge=0, le=1)
    max_upload_bytes: int = Field(default=200 * GiB, ge=1)
    # A gzip upload (or drop-folder file) may inflate to max_decompression_ratio times its
    # compressed size, or decompressed_floor_bytes if that is more, and never beyond
    # max_decompressed_bytes: a small gzip bomb cannot fill the shared volume.
    max_decompressed_bytes: int = Field(default=1024 * GiB, ge=1)
    max_decompression_ratio: float = Field(default=100, ge=1)
    decompressed_floor_bytes: int = Field(default=1 * GiB, ge=1)
    # Free space kept on the shared volume: an upload that would not fit is refused (507)
    # before it is read when its size is known, else as soon as writing would eat into it.
    min_free_bytes: int = Field(default=1 * GiB, ge=0)
    # A stored upload is flushed to disk (fdatasync) every upload_sync_bytes as it is
    # written (0: only at its end), so that its end never flushes GBs of dirty pages at once
    # while the store shares the disk (docs/decisions/upload-sync.md).
    upload_sync_bytes: int = Field(default=64 * MiB, ge=0)
    # Slow uploads (the edge streams bodies through, so the API sees a trickle as it is): an
    # upload that sends nothing for upload_idle_timeout_s, or less than
    # upload_min_bytes_per_s over any upload_rate_window_s, is cut with a 408 (0: no rate).
    upload_idle_timeout_s: float = Field(default=60, gt=0)
    upload_min_bytes_per_s: float = Field(default=1024, ge=0)
    upload_rate_window_s: float = Field(default=30, gt=0)
    # Fast uploads: one is taken at most this fast on average (0: no cap), so that storing
    # it leaves the API process, which serves lookups too, time for them
    # (docs/decisions/upload-rate.md).
    upload_max_bytes_per_s: float = Field(default=256 * MiB, ge=0)
    # Multipart uploads: at most this many parts (each part's headers are bounded by the
    # parser, 4 KiB per header, 8 headers).
    max_multipart_parts: int = Field(default=16, ge=1)
    # Unacknowledged tasks are redelivered after this; longer than any chunk takes.
    broker_visibility_timeout_s: int = Field(default=900, ge=1)
    # Jobs with no progress for this long are failed by the watchdog (it runs every
    # watchdog_period_s); longer than the visibility timeout, so redelivery gets its chance.
    job_stall_timeout_s: int = Field(default=1800, ge=1)
    watchdog_period_s: float = Field(default=60, gt=0)
    # A queued job whose plan task was lost is sent again by the watchdog, this many sends
    # in all, before it fails (its file is kept until then).
    plan_attempts: int = Field(default=3, ge=1)
    # Backoff doubles from task_retry_backoff_s up to 60 s (jittered). After the retries a
    # task makes one last attempt if the store answers (a failure then fails the job), else it
    # goes back to the broker: a longer store outage costs time, bounded by the stall timeout.
    task_max_retries: int = Field(default=10, ge=0)
    task_retry_backoff_s: float = Field(default=2.0, ge=0)
    worker_concurrency: int = Field(default=2, ge=1)
    # Loads yield the CPU to lookups where they share a host: the worker's niceness (and its
    # session's, see worker/cpu_priority.py); 0 leaves it as started.
    worker_nice: int = Field(default=10, ge=0, le=19)
    versions_to_keep: int = Field(default=2, ge=1)
    # Collections of retired or failed versions are removed only after this long, and only
    # if the pointer has not named them for this long: readers still on the previous
    # version (<= 1 s) and a racing rollback never lose their data.
    drop_grace_s: float = Field(default=120, ge=0)
    # A version collection's drop gets this long, instead of TASK_STORE_TIMEOUT_S: a store
    # may take minutes to drop tens of millions of rows. A drop past it is left to the next
    # cleanup (the version stays retired and barred, never served again).
    drop_timeout_s: float = Field(default=600, gt=0)
    # Documents per delete when a removed version's collection is emptied before its drop,
    # paced like a load's inserts (worker/paced_removal.py); 0: drop at once. Off for
    # MongoDB, whose drop does not hold reads; `make run`, the tests and the benches set it
    # for the dev store they start, whose drop blocks it for the whole drop (docs/scaling.md).
    remove_batch_docs: int = Field(default=0, ge=0, le=10_000)

    # Full reject reports (<data_dir>/rejects, GET /jobs/{id}/rejects) are kept this long
    # after their job ends, then removed by the watchdog's sweep.
    rejects_retention_s: float = Field(default=7 * 24 * 3600, ge=0)
    # A job's reject report lists at most this many rejected lines in full (plus one per
    # chunk), every reject counted by reason in the job record; the plan reserves room for it
    # (~1.5 KiB a line) on the shared volume.
    reject_report_max_lines: int = Field(default=10_000, ge=0)

    # Drop folder (<data_dir>/inbox): scanned by the beat schedule every inbox_poll_seconds; a
    # file is taken once its size holds still and it is at least inbox_settle_seconds old.
    inbox_poll_seconds: float = Field(default=60, gt=0)
    inbox_settle_seconds: float = Field(default=60, ge=0)

    # Reads
    cache_ttl_seconds: int = Field(default=3600, ge=1)
    negative_cache_ttl_seconds: int = Field(default=60, ge=1)
    pointer_poll_seconds: float = Field(default=0.5, gt=0, le=1)
    # HTTP caching of lookups (docs/http-caching.md): how long an edge, CDN or browser may
    # reuse an answer, i.e. the staleness it may add after a switch or rollback; a shorter
    # lifetime for 404s; stale-if-error (0 = not sent): how long past max-age an edge may
    # serve its last good answer while the API answers errors (store outage) or is down.
    lookup_max_age_s: int = Field(default=5, ge=0)
    lookup_negative_max_age_s: int = Field(default=2, ge=0)
    lookup_stale_if_error_s: int = Field(default=0, ge=0)
    # First cache level, in each API process: answers by (version, id), bounded in bytes
    # (body + id + ~440 bytes of bookkeeping per entry); 0 turns it off.
    local_cache_max_bytes: int = Field(default=48 * MiB, ge=0)
    # Hot ids: one lookup in hot_id_sample_every is counted; each process sends its counts
    # to a Redis sorted set every hot_id_flush_seconds; the set keeps hot_id_max ids.
    hot_id_sample_every: int = Field(default=16, ge=1)
    hot_id_flush_seconds: float = Field(default=2.0, gt=0)
    hot_id_max: int = Field(default=20_000, ge=1)
    # Warm-up before a switch: at most warmup_max_ids hot ids, at most warmup_max_seconds;
    # 0 ids turns it off. It never fails a job and never holds a switch longer than that
    # (plus at most one 0.5 s Redis timeout; shared/readpath/warmup.py).
    # 10 s is a small share of the 30-minute cycle and enough for 10k ids even on a slow
    # store (docs/decisions/warm-up-batches.md).
    warmup_max_ids: int = Field(default=10_000, ge=0)
    warmup_max_seconds: float = Field(default=10.0, ge=0)
    # Ids per $in read of the warm-up. Small, so that no read holds the store long while
    # lookups wait (docs/decisions/warm-up-batches.md).
    warmup_batch_ids: int = Field(default=32, ge=1, le=10_000)

    # Loads yield to reads: each worker process paces its insert batches (AIMD on their
    # latency per row against the best recently seen); see worker/throttle.py.
    ingest_throttle: bool = True
    # A batch slower per row than this many times the recent best counts as "store busy".
    ingest_throttle_slowdown: float = Field(default=2.0, gt=1)
    # Floor and ceiling of the paced rate, rows/s per worker process (0: no ceiling).
    ingest_min_rows_per_s: float = Field(default=1000, gt=0)
    ingest_max_rows_per_s: float = Field(default=0, ge=0)
    # ... and on what readers see: each API process publishes its store reads' latencies to
    # Redis every read_latency_publish_s (0: never; see shared/readpath/read_latency.py); when the
    # readers' p90 since a worker's last decision is above ingest_read_slowdown times their
    # calm baseline (and above ingest_read_floor_ms), it halves its rate, else adds to it.
    # No signal (no misses, Redis unreachable): the insert-latency rule alone.
    read_latency_publish_s: float = Field(default=0.5, ge=0)
    ingest_read_signal: bool = True
    # 4: keeps lookups' p99 during a load well within 3x of idle without slowing the load
    # more than it must (docs/decisions/throttle-signals.md).
    ingest_read_slowdown: float = Field(default=4.0, gt=1)
    # 5 ms: below it a store read is fast whatever its ratio to the calm baseline; with 2 ms,
    # a dev store faster at rest (1.1 ms) paced a 100M-row reduce five times as often, for
    # the same lookups' p99 (docs/decisions/throttle-signals.md).
    ingest_read_floor_ms: float = Field(default=5.0, ge=0)

    # Security. ``production`` (set by docker-compose.yml) requires real secrets: those the
    # process's ``service_role`` uses (docs/security.md).
    production: bool = False
    service_role: Role = "all"
    # Writes (uploads, rollback) need the write token when it is set. Reads other than lookups
    # and health (jobs, rejects, datasets, metrics, docs, the operator page) need the read
    # token or the write token when either is set.
    write_token: SecretStr | None = None
    read_token: SecretStr | None = None

    # `make run` only: where its dev store, Redis files and process record live (relative to
    # the repository unless absolute).
    devstack_dir: Path = Path("data")
    # How long `make run` waits for each service to listen (0: as long as it runs; a store
    # opening a big data directory can take minutes). Progress is printed every 10 s.
    devstack_start_timeout_s: float = Field(default=0, ge=0)
    # `make run` and the benchmarks only: the dev store's WiredTiger cache (secantusd's
    # --cache-size, as MongoDB's storage.wiredTiger.engineConfig.cacheSizeGB), e.g. "1G".
    devstack_store_cache: str = Field(default="1G", pattern=r"^[1-9][0-9]*[MG]$")
    # ... and its GIL switch interval (Python's default: 5 ms), so that its reads do not queue
    # behind its write threads as mongod's never do (devstack/dev_store.py).
    devstack_store_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)

    # `make run` only: also start a local Prometheus with deploy/prometheus's rules, scraping
    # this stack's API, on this port (docs/operations.md).
    devstack_prometheus: bool = False
    prometheus_port: int = 9090

    # Operations (docs/operations.md). The partner's upload period: the freshness objective
    # and its alert are "the live dataset is younger than two periods". Exported as a gauge
    # so the alert rules need no copy of it.
    upload_period_s: float = Field(default=1800, gt=0)
    # Each worker node writes a heartbeat to the broker this often; the API counts the nodes
    # heard from within three periods as online (promotions_workers_online).
    worker_heartbeat_s: float = Field(default=5, gt=0)
    # Scrape-time operations series (jobs, broker, volume, store/cache pings) are read at
    # most this often per API process.
    ops_metrics_ttl_s: float = Field(default=5, ge=0)

    # Flower
    flower_port: int = 5555
    flower_basic_auth: SecretStr | None = None

    log_level: str = "INFO"
    # "json": one JSON object per line (deployments); "text": readable lines (local runs).
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        json_file = os.environ.get("CONFIG_FILE", "config.json")
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            JsonConfigSettingsSource(settings_cls, json_file=json_file),
        )

    @model_validator(mode="after")
    def _slices_are_a_power_of_two(self) -> Settings:
        if self.shuffle_slices & (self.shuffle_slices - 1):
            raise ValueError(f"SHUFFLE_SLICES must be a power of two, not {self.shuffle_slices}")
        return self

    @model_validator(mode="after")
    def _negative_answers_expire_first(self) -> Settings:
        if self.lookup_negative_max_age_s > self.lookup_max_age_s:
            raise ValueError(
                "LOOKUP_NEGATIVE_MAX_AGE_S must not exceed LOOKUP_MAX_AGE_S: a 404 may turn "
                "into an answer at the next switch, so it is the one to expire first"
            )
        return self

    @model_validator(mode="after")
    def _tokens_not_empty(self) -> Settings:
        """An empty WRITE_TOKEN= used to mean "open" to the start-up line but accepted a
        whitespace bearer: a set token must be a token."""
        for name in ("write_token", "read_token"):
            token: SecretStr | None = getattr(self, name)
            if token is not None and not token.get_secret_value().strip():
                raise ValueError(
                    f"{name.upper()} is set but empty: unset it (development only) or set "
                    "a real token"
                )
            if token is not None and token.get_secret_value() != token.get_secret_value().strip():
                raise ValueError(f"{name.upper()} has leading or trailing whitespace")
        return self

    @model_validator(mode="after")
    def _real_secrets_in_production(self) -> Settings:
        if not self.production:
            return self
        problems = self.production_problems()
        if problems:
            raise ValueError("production needs real secrets: " + "; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """What keeps these settings from running in production (never a secret's value)."""
        needs = _ROLE_NEEDS[self.service_role]
        problems = []
        if "write_token" in needs and self.write_token is None:
            problems.append("WRITE_TOKEN is not set")
        for name in ("write_token", "read_token"):
            token: SecretStr | None = getattr(self, name)
            if token is not None:
                problems.append(
                    _secret_problem(name.upper(), token.get_secret_value(), MIN_TOKEN_CHARS) or ""
                )
        if "mongo" in needs:
            problems.append(
                _url_password_problem("MONGO_URL", self.mongo_url.get_secret_value()) or ""
            )
        if "cache" in needs:
            problems.append(
                _url_password_problem("REDIS_URL", self.redis_url.get_secret_value()) or ""
            )
        if "broker" in needs:
            problems.append(
                _url_password_problem("BROKER_URL", self.broker_url.get_secret_value()) or ""
            )
        if "flower" in needs:
            login = self.flower_basic_auth.get_secret_value() if self.flower_basic_auth else ""
            user, _, password = login.partition(":")
            if not user or not password:
                problems.append("FLOWER_BASIC_AUTH is not set as user:password")
            else:
                problems.append(
                    _secret_problem("the FLOWER_BASIC_AUTH password", password, MIN_PASSWORD_CHARS)
                    or ""
                )
        return [problem for problem in problems if problem]

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def inbox_dir(self) -> Path:
        return self.data_dir / "inbox"

    @property
    def quarantine_dir(self) -> Path:
        """Drop-folder names that were no plain file of their own, each with a reason."""
        return self.data_dir / "quarantine"

    @property
    def rejects_dir(self) -> Path:
        return self.data_dir / "rejects"

    @property
    def runs_dir(self) -> Path:
        """The shuffle's run files (worker/shuffle_files.py), removed when a job ends."""
        return self.data_dir / "runs"

    def safe_summary(self) -> dict[str, Any]:
        """What may be logged at start-up: URLs without credentials, no tokens."""
        return {
            "app": f"{self.app_host}:{self.app_port}",
            "mongo_url": redact_url(self.mongo_url.get_secret_value()),
            "mongo_db": self.mongo_db,
            "redis_url": redact_url(self.redis_url.get_secret_value()),
            "broker_url": redact_url(self.broker_url.get_secret_value()),
            "data_dir": str(self.data_dir),
            "chunk_size_bytes": self.chunk_size_bytes,
            "write_token": "set" if self.write_token else "unset",
            "read_token": "set" if self.read_token else "unset",
        }


def redact_url(url: str) -> str:
    """Hide the password of a connection URL (mongodb://user:***@host)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
