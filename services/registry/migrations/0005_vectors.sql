-- Steering vectors (docs/optimization.md): per-layer directions in a base model's hidden space; the tensors are
-- in S3 (object_key: tenants/<tenant>/vectors/<id>.safetensors). Names are unique per tenant and base model.
CREATE TABLE vectors (
    id                 text PRIMARY KEY,
    tenant_id          text NOT NULL REFERENCES tenants (id),
    name               text NOT NULL,
    base_model         text NOT NULL,
    hidden_size        integer NOT NULL CHECK (hidden_size > 0),
    layer_count        integer NOT NULL CHECK (layer_count > 0),
    layers             integer[] NOT NULL,
    method             text NOT NULL CHECK (method IN ('mean_diff', 'pca', 'imported')),
    pair_count         integer NOT NULL DEFAULT 0,
    built_in           boolean NOT NULL DEFAULT false,
    description        text NOT NULL DEFAULT '',
    suggested_strength double precision NOT NULL DEFAULT 0,
    object_key         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, base_model, name)
);
CREATE INDEX vectors_tenant ON vectors (tenant_id, base_model, name);
