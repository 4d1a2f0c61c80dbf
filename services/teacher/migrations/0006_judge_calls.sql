-- Every JudgeAnswers call that reached a provider: its token usage, kept as a job keeps its rows'.
CREATE TABLE judge_calls (
    id             bigserial PRIMARY KEY,
    tenant_id      text NOT NULL,
    teacher        text NOT NULL,                  -- the judge, "<provider>:<model>"
    rows_total     int NOT NULL,
    rows_failed    int NOT NULL,                   -- rows with no score (no reply, or none on the scale)
    requests       int NOT NULL,                   -- tries sent to the provider
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    billed         boolean NOT NULL,               -- false: the tenant's own provider key paid
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX judge_calls_tenant ON judge_calls (tenant_id, created_at DESC);
