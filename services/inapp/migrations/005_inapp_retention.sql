-- Retention (docs/data.md) finds finished ledger rows past their age by creation time: a BRIN index,
-- cheap to keep on an append-mostly table.
CREATE INDEX IF NOT EXISTS ledger_age ON inapp.ledger USING brin (created_at);

-- Inbox retention: notifications by age, soft-deleted ones by the time they were deleted.
CREATE INDEX IF NOT EXISTS notifications_age ON inapp.notifications USING brin (created_at);
CREATE INDEX IF NOT EXISTS notifications_deleted ON inapp.notifications (deleted_at) WHERE deleted_at IS NOT NULL;
