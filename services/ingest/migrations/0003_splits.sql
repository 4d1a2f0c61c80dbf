-- Train/eval splits of pairs datasets; each side is a canonical JSONL in S3.
CREATE TABLE splits (
    tenant_id       text NOT NULL,
    id              text NOT NULL,          -- "sp_" + 24 hex digits of sha256 over the request
    dataset_id      text NOT NULL,
    eval_dataset_id text NOT NULL DEFAULT '', -- '' when the eval side was held out of dataset_id
    eval_fraction   double precision NOT NULL DEFAULT 0, -- 0 when eval_dataset_id is given
    seed            bigint NOT NULL DEFAULT 0,
    train_rows      bigint NOT NULL,
    eval_rows       bigint NOT NULL,
    overlap_removed bigint NOT NULL DEFAULT 0,
    train_key       text NOT NULL,
    eval_key        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
