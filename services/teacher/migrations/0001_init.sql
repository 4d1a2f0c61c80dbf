-- The teacher service's schema: the tenants' own provider keys, encrypted.
CREATE TABLE provider_keys (
    tenant_id   text NOT NULL,
    provider    smallint NOT NULL,
    ciphertext  bytea NOT NULL,     -- AES-GCM envelope; the tenant id is bound as associated data
    last4       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    checked_at  timestamptz,
    PRIMARY KEY (tenant_id, provider)
);
