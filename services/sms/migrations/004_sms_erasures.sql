-- Users erased (the erasure topic): a dispatch to one of them is finished as 'suppressed' (user_deleted),
-- never sent, even when it waited in a retry topic or is replayed from dlq. Kept after the erasure: it is
-- what refuses those sends; it holds the user id and nothing else about the user.
CREATE TABLE IF NOT EXISTS sms.erasures (
    user_id text PRIMARY KEY,
    erasure_id uuid NOT NULL,
    requested_at timestamptz NOT NULL,
    erased_at timestamptz NOT NULL DEFAULT now()
);

-- An erasure finds the user's ledger rows (to remove error texts that may quote an address) without a scan.
CREATE INDEX IF NOT EXISTS ledger_user ON sms.ledger (user_id);
