-- The ingest service's schema: dataset versions, content-addressed per tenant.
CREATE TABLE datasets (
    tenant_id     text NOT NULL,
    id            text NOT NULL,          -- "ds_" + 24 hex digits of the content's sha256
    display_name  text NOT NULL,
    kind          smallint NOT NULL,
    source_format smallint NOT NULL,
    source_sha256 text NOT NULL,
    size_bytes    bigint NOT NULL,
    rows          bigint NOT NULL DEFAULT 0,
    valid         boolean NOT NULL DEFAULT false,
    object_key    text NOT NULL,          -- where the uploaded bytes are in S3
    report        jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX datasets_tenant_created ON datasets (tenant_id, created_at DESC, id);
