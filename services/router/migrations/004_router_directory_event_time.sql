-- The time of the newest change applied to each directory row (a user.* event's `time`, or the moment of an API
-- PUT): a change older than it is not applied, so events that arrive out of order cannot undo a newer one.
ALTER TABLE router.recipients ADD COLUMN changed_at timestamptz;
