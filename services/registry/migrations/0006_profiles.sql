-- A model's optimization profiles (docs/optimization.md): attached vectors and sampling settings.
-- body: {"sampling": {...the fields set...}, "vectors": [{"vector_id", "strength", "first_layer", "last_layer"}]}
-- (vector ids, resolved from names when the profile is set; DeleteVector reads them to refuse while attached).
CREATE TABLE profiles (
    tenant_id  text NOT NULL REFERENCES tenants (id),
    model_id   text NOT NULL REFERENCES models (id),
    name       text NOT NULL,
    body       jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, name)
);
CREATE INDEX profiles_tenant ON profiles (tenant_id, model_id);
