CREATE TABLE sms.ledger (
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
    -- what the message cost: the cost ledger by type, category and country
    category text,
    critical boolean NOT NULL DEFAULT false,
    country text,
    encoding text CHECK (encoding IN ('GSM-7', 'UCS-2')),
    segments integer CHECK (segments >= 0),
    price_usd numeric(12, 6),
    -- the provider's delivery receipt
    provider_status text,
    error_code text,
    delivered_at timestamptz,
    PRIMARY KEY (notification_id, target)
);

CREATE UNIQUE INDEX ledger_provider_message ON sms.ledger (provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX ledger_spend ON sms.ledger (sent_at, event_type, category, country) WHERE sent_at IS NOT NULL;
