-- Producers' API keys: only a SHA-256 digest of each key is kept; several may be
-- active for one producer at once, so keys can be rotated without downtime.
CREATE TABLE ingress.api_keys (
    id uuid PRIMARY KEY,
    producer text NOT NULL CHECK (producer <> ''),
    key_hash bytea NOT NULL UNIQUE,
    key_prefix text NOT NULL,
    event_types text[] NOT NULL CHECK (cardinality(event_types) > 0),
    rate_per_minute integer NOT NULL CHECK (rate_per_minute > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);

CREATE INDEX api_keys_producer ON ingress.api_keys (producer, created_at DESC);
