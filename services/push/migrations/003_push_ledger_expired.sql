-- A dispatch past its expires_at is finished as 'expired', never sent late.
ALTER TABLE push.ledger DROP CONSTRAINT IF EXISTS ledger_status_check;
ALTER TABLE push.ledger ADD CONSTRAINT ledger_status_check
    CHECK (status IN ('claimed', 'sent', 'delivered', 'failed', 'suppressed', 'retrying', 'dead_lettered', 'expired'));
