CREATE TABLE email.ledger (
    notification_id uuid NOT NULL,
    target text NOT NULL DEFAULT '',
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
