-- Upload sessions: what a resumable or presigned upload promised, and how far it got.
-- Received bytes are staged in S3 under tenants/<tenant>/staging/<id>/ until the
-- upload is whole and stored as a dataset.
CREATE TABLE uploads (
    tenant_id    text NOT NULL,
    id           text NOT NULL,           -- "up_" + 16-64 [a-z0-9], picked by the client or the service
    plan         jsonb NOT NULL,          -- uploads.Plan: kind, files (name, size, sha256), options
    size_bytes   bigint NOT NULL,
    acknowledged bigint NOT NULL DEFAULT 0, -- bytes staged durably; a resumed stream starts here
    presigned    boolean NOT NULL DEFAULT false,
    dataset_id   text NOT NULL DEFAULT '',  -- set once the upload became a dataset
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
