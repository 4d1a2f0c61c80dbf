-- The registry's schema: tenants, API keys, allowance reservations, models.
CREATE TABLE tenants (
    id              text PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    tier            smallint NOT NULL,
    model_allowance integer NOT NULL CHECK (model_allowance >= 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    prefix     text NOT NULL,
    key_hash   text NOT NULL UNIQUE,  -- sha256 of the key; the key itself is never stored
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- One private-model slot held by a run from its start until its model is
-- registered (committed) or the run ends without one (released).
CREATE TABLE reservations (
    run_id     text PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (id),
    state      text NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_tenant_state ON reservations (tenant_id, state);

CREATE TABLE models (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    name            text NOT NULL,
    path            smallint NOT NULL,
    base_model      text NOT NULL,
    run_id          text NOT NULL,
    version         integer NOT NULL,
    artifact_kind   smallint NOT NULL,
    artifact_uri    text NOT NULL,
    metrics         jsonb NOT NULL DEFAULT '{}',
    training_config jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name, version)
);
CREATE INDEX models_tenant_created ON models (tenant_id, created_at DESC, id);
