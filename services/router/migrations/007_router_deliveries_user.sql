-- An erasure deletes a user's delivery rows by user id, also those whose decision retention removed.
CREATE INDEX IF NOT EXISTS deliveries_user ON router.deliveries (user_id);
