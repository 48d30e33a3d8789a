-- Browser push subscriptions and the push delivery ledger.
CREATE TABLE push.subscriptions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id text NOT NULL,
    endpoint text NOT NULL UNIQUE CHECK (length(endpoint) <= 2048 AND endpoint ~ '^https?://'),  -- http only for HERALD_PUSH_DEV_HOSTS
    endpoint_hash text NOT NULL UNIQUE,  -- sha256 of endpoint: the ledger target
    p256dh text NOT NULL CHECK (length(p256dh) BETWEEN 86 AND 88),
    auth text NOT NULL CHECK (length(auth) BETWEEN 22 AND 24),
    user_agent text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_success_at timestamptz,
    last_failure_at timestamptz,
    failures integer NOT NULL DEFAULT 0,  -- consecutive failed sends; reset by a success
    last_error text
);

CREATE INDEX subscriptions_user ON push.subscriptions (user_id, created_at);

CREATE TABLE push.ledger (
    notification_id uuid NOT NULL,
    target text NOT NULL DEFAULT '',  -- '' for the dispatch, the endpoint hash for each subscription
    event_id text NOT NULL,
    event_type text NOT NULL,
    user_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('claimed', 'sent', 'delivered', 'failed', 'suppressed', 'retrying', 'dead_lettered')),
    attempts integer NOT NULL DEFAULT 1,
    provider_message_id text,
    error text,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, target)
);
