-- The recipients directory, preferences and the decision trace.

CREATE TABLE router.recipients (
    user_id text PRIMARY KEY,
    email text,
    phone text CHECK (phone IS NULL OR phone ~ '^\+[1-9][0-9]{6,14}$'),
    phone_verified_at timestamptz,
    locale text NOT NULL DEFAULT 'en',
    timezone text NOT NULL DEFAULT 'UTC',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,  -- tombstone: a deleted user keeps no address and gets nothing
    CHECK (phone_verified_at IS NULL OR phone IS NOT NULL),
    CHECK (deleted_at IS NULL OR (email IS NULL AND phone IS NULL))
);

-- Broadcasts walk the users that are not deleted, in user id order.
CREATE INDEX recipients_active ON router.recipients (user_id) WHERE deleted_at IS NULL;

-- Only the user's explicit choices; everything absent takes the catalogue's default.
CREATE TABLE router.preferences (
    user_id text NOT NULL,
    category text NOT NULL CHECK (category IN ('lesson_updates', 'messages', 'reviews', 'learning_tips', 'system_updates', 'promotional')),
    channel text NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'inapp')),
    enabled boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, category, channel)
);

-- What the router decided for each event x recipient x channel (or for the whole event when
-- it was dead-lettered: user_id and channel are then NULL).
CREATE TABLE router.decisions (
    notification_id uuid PRIMARY KEY,
    event_id text NOT NULL,
    event_source text NOT NULL,
    event_type text NOT NULL,
    user_id text,
    channel text,
    critical boolean NOT NULL DEFAULT false,
    template text,
    decision text NOT NULL CHECK (decision IN ('routed', 'suppressed', 'dead_lettered')),
    reason text NOT NULL,
    detail text,
    decided_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX decisions_event ON router.decisions (event_id, decided_at);
CREATE INDEX decisions_user ON router.decisions (user_id, decided_at) WHERE user_id IS NOT NULL;

-- What the senders then did (from notify.status), one row per status and attempt.
CREATE TABLE router.deliveries (
    notification_id uuid NOT NULL,
    status text NOT NULL,
    attempt integer NOT NULL,
    reason text,
    provider_message_id text,
    event_id text NOT NULL,
    user_id text NOT NULL,
    channel text NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (notification_id, status, attempt)
);

-- Pruning old trace rows scans by time; BRIN stays small and cheap on append-mostly tables.
CREATE INDEX decisions_age ON router.decisions USING brin (decided_at);
CREATE INDEX deliveries_age ON router.deliveries USING brin (at);
