-- What the gateway's OpenAI-compatible endpoint serves: one deployment per model at most.
CREATE TABLE deployments (
    model_id     text PRIMARY KEY REFERENCES models (id),
    tenant_id    text NOT NULL REFERENCES tenants (id),
    engine       text NOT NULL CHECK (engine IN ('local', 'vllm')),
    replicas     integer NOT NULL CHECK (replicas >= 1),
    state        text NOT NULL CHECK (state IN ('loading', 'ready', 'failed')),
    upstream     text NOT NULL DEFAULT '',  -- vllm: the OpenAI-compatible base URL the gateway routes to
    adapter_name text NOT NULL DEFAULT '',  -- vllm multi-LoRA: the adapter's name in the upstream's pool
    error        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_tenant ON deployments (tenant_id, created_at, model_id);
