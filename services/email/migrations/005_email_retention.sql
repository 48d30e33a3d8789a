-- Retention (docs/data.md) finds finished ledger rows past their age by creation time: a BRIN index,
-- cheap to keep on an append-mostly table.
CREATE INDEX IF NOT EXISTS ledger_age ON email.ledger USING brin (created_at);
