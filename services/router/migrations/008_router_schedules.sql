-- Scheduled sends (docs/timing.md): events held until their time (`sendat`), reminders Herald plans
-- itself and dispatches held by a user's quiet hours, released by the scheduler of any router instance,
-- exactly one of them per schedule.
CREATE TABLE IF NOT EXISTS router.schedules (
    id uuid PRIMARY KEY,                      -- derived from source + event id: a redelivered event schedules nothing more
    source text NOT NULL,                     -- the producer's CloudEvents source: quotas and cancellation keys are per source
    cancel_key text NOT NULL,                 -- what cancels it (with the source): DELETE /v1/schedules/{key}, a cancelling event
    event_id text NOT NULL,
    event_type text NOT NULL,
    event bytea NOT NULL,                     -- the CloudEvent as it will be routed, JSON (a held dispatch: the Dispatch); emptied once finished
    topic text,                               -- where it is released (a held dispatch: its notify topic); NULL: the event's domain topic
    trace_id uuid NOT NULL,                   -- its row in router.decisions (the event's own row; a held dispatch's notification id)
    partition_key bytea,                      -- the Kafka key it is released with (the original record's)
    kind text NOT NULL CHECK (kind IN ('sendat', 'reminder', 'held')),
    user_ids text[] NOT NULL DEFAULT '{}',    -- whom its notifications name (erasure finds a user's schedules by it)
    due_at timestamptz NOT NULL,
    event_time timestamptz NOT NULL,          -- the planning event's time: a cancellation applies to schedules of events up to its own time
    expires_at timestamptz,                   -- not released after this (it fell due while no router ran, and is pointless now)
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'released', 'cancelled', 'expired', 'failed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- The scheduler takes due schedules in time order; cancellation and the quota look up pending ones.
CREATE INDEX IF NOT EXISTS schedules_due ON router.schedules (due_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS schedules_key ON router.schedules (source, cancel_key) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS schedules_finished ON router.schedules USING brin (finished_at);
CREATE INDEX IF NOT EXISTS schedules_users ON router.schedules USING gin (user_ids);
-- Retention keeps the trace row of a schedule still pending, however old.
CREATE INDEX IF NOT EXISTS schedules_trace ON router.schedules (trace_id) WHERE status = 'pending';

-- The last cancellation of each key (by the cancelling event's time): a schedule from an older event
-- that arrives after it (another partition, a replay) is not planned.
CREATE TABLE IF NOT EXISTS router.schedule_cancellations (
    source text NOT NULL,
    cancel_key text NOT NULL,
    cancelled_at timestamptz NOT NULL,
    PRIMARY KEY (source, cancel_key)
);

-- A user's quiet hours (wall-clock times in the user's time zone, router.recipients.timezone).
CREATE TABLE IF NOT EXISTS router.quiet_hours (
    user_id text PRIMARY KEY,
    starts time NOT NULL,
    ends time NOT NULL CHECK (ends <> starts),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The trace says when an event was scheduled (decision 'scheduled') and a dispatch held by quiet hours ('held').
ALTER TABLE router.decisions DROP CONSTRAINT IF EXISTS decisions_decision_check;
-- NOT VALID: rows already there are not read again under the table's lock (they hold old values only).
ALTER TABLE router.decisions ADD CONSTRAINT decisions_decision_check
    CHECK (decision IN ('routed', 'suppressed', 'dead_lettered', 'scheduled', 'held')) NOT VALID;
