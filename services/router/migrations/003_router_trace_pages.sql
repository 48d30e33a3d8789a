-- The per-event trace is read in pages, in (decided_at, notification_id) order, resuming after a cursor.
CREATE INDEX decisions_event_page ON router.decisions (event_id, decided_at, notification_id);
DROP INDEX router.decisions_event;
