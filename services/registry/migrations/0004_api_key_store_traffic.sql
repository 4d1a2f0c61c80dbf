-- Requests made with the key through the gateway are stored as traffic (as if each said "store": true).
ALTER TABLE api_keys ADD COLUMN store_traffic boolean NOT NULL DEFAULT false;
