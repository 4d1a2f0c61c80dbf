-- The trainer service's schema: runs and their event log.
CREATE TABLE runs (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL DEFAULT '',
    path            smallint NOT NULL,
    mode            smallint NOT NULL,
    state           smallint NOT NULL,
    request         jsonb NOT NULL,            -- the CreateRunRequest, as proto JSON
    progress        jsonb NOT NULL DEFAULT '{}',
    metrics         jsonb NOT NULL DEFAULT '{}',
    error           jsonb,
    model_id        text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant_id, idempotency_key) WHERE idempotency_key <> '';
CREATE INDEX runs_tenant_created ON runs (tenant_id, created_at DESC, id);

-- Every state change, progress report and metrics report of a run, in order.
CREATE TABLE run_events (
    run_id   text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    sequence bigint NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    event    jsonb NOT NULL,                   -- a RunEvent payload, as proto JSON
    PRIMARY KEY (run_id, sequence)
);
