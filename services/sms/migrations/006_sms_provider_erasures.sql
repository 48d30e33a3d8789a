-- Messages of erased users still to be deleted (or redacted) at Twilio (HERALD_TWILIO_ERASURE): queued by
-- the erasure, tried at once, and what Twilio did not take then is tried again in the background.
CREATE TABLE IF NOT EXISTS sms.provider_erasures (
    provider_message_id text PRIMARY KEY,
    user_id text NOT NULL,
    how text NOT NULL CHECK (how IN ('delete', 'redact')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    due_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS provider_erasures_due ON sms.provider_erasures (due_at);
CREATE INDEX IF NOT EXISTS provider_erasures_user ON sms.provider_erasures (user_id);
