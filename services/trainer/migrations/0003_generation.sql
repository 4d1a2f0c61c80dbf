-- The teacher's part of a run (distillation, augmentation): its generation job and usage.
ALTER TABLE runs ADD COLUMN generation jsonb;
