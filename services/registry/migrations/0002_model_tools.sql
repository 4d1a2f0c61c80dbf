-- A tool model's tools, in training order, each a canonical tool as JSON text (text, not jsonb:
-- jsonb would reorder keys, and a model is asked with the tool text it was trained on).
ALTER TABLE models ADD COLUMN tools_json text[] NOT NULL DEFAULT '{}';
