-- Tool-calling trajectories. A job's prompts (its seeds, their rewordings and the
-- requests no tool fits) are written once and kept with the job, with what writing
-- them took, so a restarted teacher does not ask for them again. A trajectory that
-- fails verification is kept (its output) with its reasons: rejected, neither done
-- nor failed.
ALTER TABLE generation_jobs ADD COLUMN plan jsonb;
ALTER TABLE generation_rows ADD COLUMN rejected boolean NOT NULL DEFAULT false;
ALTER TABLE generation_rows ADD COLUMN reasons text[] NOT NULL DEFAULT '{}';
