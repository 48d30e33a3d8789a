CREATE SCHEMA IF NOT EXISTS inapp;

CREATE TABLE inapp.notifications (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    category text NOT NULL CHECK (category IN ('lesson_updates', 'messages', 'reviews', 'learning_tips', 'system_updates', 'promotional', 'security')),
    type text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    url text,
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz,
    read_at timestamptz,
    deleted_at timestamptz
);

CREATE INDEX notifications_user_latest ON inapp.notifications (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX notifications_user_unread ON inapp.notifications (user_id, created_at DESC) WHERE read_at IS NULL AND deleted_at IS NULL;
CREATE INDEX notifications_type ON inapp.notifications (type);

CREATE TABLE inapp.ledger (
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
