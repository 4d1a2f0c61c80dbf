-- Captured traffic: requests through the gateway (to one of the tenant's models, or proxied to an
-- outside provider) that asked to be stored, each with its answer. The content is the tenant's
-- alone and never logged; no header is ever stored.
CREATE TABLE traffic (
    tenant_id         text NOT NULL,
    id                text NOT NULL,          -- "trf_" + 20 hex digits
    model             text NOT NULL,          -- "mdl_..." or "<provider>:<model>"
    source            text NOT NULL,          -- "endpoint" or "proxy"
    metadata          jsonb NOT NULL DEFAULT '{}', -- the request's tags, {"key": "value"}
    request_json      json NOT NULL,          -- {"messages": [...], "tools": [...]}, as sent (json keeps the text)
    response_json     json NOT NULL,          -- the answer: one assistant message
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX traffic_tenant_created ON traffic (tenant_id, created_at DESC, id DESC);
-- Tag filters: metadata @> '{"task": "support"}'.
CREATE INDEX traffic_metadata ON traffic USING gin (metadata jsonb_path_ops);
