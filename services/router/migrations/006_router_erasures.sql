-- Erasure requests (one per user: user.deleted, or DELETE /v1/recipients/{user_id}) and each service's
-- report that it has erased the user (the erasure status topic), for GET /v1/erasures/{user_id}.
CREATE TABLE IF NOT EXISTS router.erasures (
    user_id text PRIMARY KEY,
    erasure_id uuid NOT NULL,
    event_id text NOT NULL,
    requested_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS router.erasure_reports (
    user_id text NOT NULL,
    service text NOT NULL,
    erasure_id uuid NOT NULL,
    erased jsonb NOT NULL DEFAULT '{}'::jsonb,   -- what the service removed, by store (rows or keys)
    reported_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, service)
);
