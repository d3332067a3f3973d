"""Names under which the worker registers its tasks; the API enqueues by name only, so it
never imports worker code."""

PLAN_JOB = "ingest.plan_job"
LOAD_CHUNK = "ingest.load_chunk"
WRITE_PARTITION = "ingest.write_partition"
FINALIZE_JOB = "ingest.finalize_job"
CLEANUP_DATASETS = "ingest.cleanup_datasets"
FAIL_STALLED_JOBS = "ingest.fail_stalled_jobs"
SCAN_INBOX = "ingest.scan_inbox"
