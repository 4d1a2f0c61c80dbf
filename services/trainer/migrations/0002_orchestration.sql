-- What the trainer needs to drive runs in the background and pick them up after a restart.
ALTER TABLE runs
    ADD COLUMN lease_owner     text NOT NULL DEFAULT '',   -- the trainer instance driving the run
    ADD COLUMN lease_until     timestamptz,                -- another instance takes over after this
    ADD COLUMN push_token_hash text NOT NULL DEFAULT '',   -- sha256 of the token the training job pushes with
    ADD COLUMN job_attempt     integer NOT NULL DEFAULT 0, -- Ray job submissions so far (job id: <run>-<n>)
    ADD COLUMN split           jsonb,                      -- the train/eval split ingest made
    ADD COLUMN result          jsonb;                      -- what the training job wrote (metrics, artifact)
CREATE INDEX runs_active ON runs (lease_until) WHERE state NOT IN (7, 8, 9);
