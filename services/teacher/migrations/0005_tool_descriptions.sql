-- Every DescribeTool call that reached a provider: its token usage, kept as a job keeps its rows'.
CREATE TABLE tool_descriptions (
    id             bigserial PRIMARY KEY,
    tenant_id      text NOT NULL,
    teacher        text NOT NULL,
    requests       int NOT NULL,                   -- tries sent to the provider
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    billed         boolean NOT NULL,               -- false: the tenant's own provider key paid
    ok             boolean NOT NULL,               -- a canonical tool came of it
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_descriptions_tenant ON tool_descriptions (tenant_id, created_at DESC);
