-- Each user's notifications get a sequence number assigned at insert time under a
-- per-user row lock, so for one user the commit order equals the number order.
-- It is the inbox cursor (newest first) and the SSE event id (resume after it).

ALTER TABLE inapp.notifications ADD COLUMN seq bigint;

UPDATE inapp.notifications AS n
   SET seq = numbered.seq
  FROM (SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY created_at, id) AS seq FROM inapp.notifications) AS numbered
 WHERE n.id = numbered.id;

ALTER TABLE inapp.notifications ALTER COLUMN seq SET NOT NULL;
ALTER TABLE inapp.notifications ADD CONSTRAINT notifications_seq_positive CHECK (seq > 0);

CREATE TABLE inapp.inbox_sequences (
    user_id text PRIMARY KEY,
    last_seq bigint NOT NULL CHECK (last_seq >= 0)
);

INSERT INTO inapp.inbox_sequences (user_id, last_seq)
SELECT user_id, max(seq) FROM inapp.notifications GROUP BY user_id;

-- "a user's latest" (all, and not deleted), "a user's unread", "a user's latest of a category"
CREATE UNIQUE INDEX notifications_user_seq ON inapp.notifications (user_id, seq DESC);
CREATE INDEX notifications_user_live ON inapp.notifications (user_id, seq DESC) WHERE deleted_at IS NULL;
CREATE INDEX notifications_user_unread_seq ON inapp.notifications (user_id, seq DESC) WHERE read_at IS NULL AND deleted_at IS NULL;
CREATE INDEX notifications_user_category ON inapp.notifications (user_id, category, seq DESC) WHERE deleted_at IS NULL;

-- superseded by the seq-ordered indexes above (the type index stays)
DROP INDEX inapp.notifications_user_latest;
DROP INDEX inapp.notifications_user_unread;
