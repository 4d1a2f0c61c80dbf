-- Provider keys by provider name, and the master key (its fingerprint) that wrapped each one,
-- so that rotating DISTILLERY_MASTER_KEY can find the rows still wrapped by an old key.
ALTER TABLE provider_keys ALTER COLUMN provider TYPE text USING (
    CASE provider WHEN 1 THEN 'openai' WHEN 2 THEN 'anthropic' WHEN 3 THEN 'google' END
);
ALTER TABLE provider_keys ADD CONSTRAINT provider_keys_provider CHECK (provider IN ('openai', 'anthropic', 'google'));
ALTER TABLE provider_keys ADD COLUMN master_key_id text NOT NULL DEFAULT '';
