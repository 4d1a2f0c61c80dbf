-- The tenant's active tool list: canonical typed tool schemas, one per name.
CREATE TABLE tools (
    tenant_id   text NOT NULL,
    id          text NOT NULL,          -- "tool_" + 24 hex digits of sha256 over the definition
    name        text NOT NULL,          -- ^[a-zA-Z0-9_-]{1,64}$
    description text NOT NULL,
    parameters  jsonb NOT NULL,         -- JSON Schema 2020-12 object schema, a type on every property
    source      smallint NOT NULL,      -- ToolSource
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);
