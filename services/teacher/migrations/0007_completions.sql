-- Every Complete call (the gateway's proxy mode) that a provider answered: its token usage, never its content.
CREATE TABLE completions (
    id             bigserial PRIMARY KEY,
    tenant_id      text NOT NULL,
    teacher        text NOT NULL,                  -- "<provider>:<model>"
    requests       int NOT NULL,                   -- tries sent to the provider
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    billed         boolean NOT NULL,               -- false: the tenant's own provider key paid
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX completions_tenant ON completions (tenant_id, created_at DESC);
