-- A run with a rubric: the rubric's validation on the eval set before training (rubric_checks.report), shown
-- by GetRun as Run.rubric_validation.
ALTER TABLE runs ADD COLUMN rubric_validation jsonb;
