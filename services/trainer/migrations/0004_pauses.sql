-- Pausing a run (PauseRun / ResumeRun): PAUSED is a state (10); a resumed run's next training job is a new
-- attempt that starts from the checkpoint the paused job saved, and does not count as a lost job.
ALTER TABLE runs ADD COLUMN pauses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN resume_pending BOOLEAN NOT NULL DEFAULT FALSE;
