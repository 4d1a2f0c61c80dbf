-- Generation jobs and their rows. Every answered (or failed) row is stored as it
-- finishes, so a restarted teacher resumes a job without asking again for any row.
CREATE TABLE generation_jobs (
    id                 text PRIMARY KEY,
    tenant_id          text NOT NULL,
    run_id             text NOT NULL DEFAULT '',   -- the run it serves; with kind, the idempotency key
    kind               smallint NOT NULL,
    state              smallint NOT NULL,
    teacher            text NOT NULL,
    request            jsonb NOT NULL,             -- the CreateGenerationJobRequest (proto JSON)
    rows_total         bigint NOT NULL,
    estimate           jsonb NOT NULL,
    billed             boolean NOT NULL DEFAULT true,
    output_key         text NOT NULL DEFAULT '',
    output_dataset_id  text NOT NULL DEFAULT '',
    rows_duplicate     bigint NOT NULL DEFAULT 0,
    error              text NOT NULL DEFAULT '',
    owner              text,                       -- the teacher instance driving it, while its lease lasts
    lease_until        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX generation_jobs_run ON generation_jobs (tenant_id, run_id, kind) WHERE run_id <> '';
CREATE INDEX generation_jobs_tenant ON generation_jobs (tenant_id, created_at DESC, id DESC);

CREATE TABLE generation_rows (
    job_id         text NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    row            bigint NOT NULL,
    prompt_name    text NOT NULL DEFAULT '',
    ok             boolean NOT NULL,
    output         jsonb,                          -- the generated row (ok)
    code           text NOT NULL DEFAULT '',       -- why it failed (not ok)
    message        text NOT NULL DEFAULT '',
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    attempts       int NOT NULL DEFAULT 1,
    PRIMARY KEY (job_id, row)
);
