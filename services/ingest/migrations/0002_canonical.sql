-- Where the canonical JSONL of a valid dataset is in S3 ('' until validated valid).
ALTER TABLE datasets ADD COLUMN canonical_key text NOT NULL DEFAULT '';
