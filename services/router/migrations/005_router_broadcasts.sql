-- Broadcasts in progress. An event to every user is split into shards, each a range of the
-- directory in user id order with its own keyset cursor: a router instance takes a shard under a
-- lease and moves its cursor after every page it has published and traced, so a crash resumes at
-- the last page (the lease runs out, another walker takes it over) and several instances share
-- one broadcast. The event's consumer is done once its shards are written here.
CREATE TABLE router.broadcasts (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL,          -- the topic namespace: routers of one deployment share only their own
    event_source text NOT NULL,
    event_id text NOT NULL,
    template text NOT NULL,           -- which of the event's notifications (one event type may broadcast several)
    generation text NOT NULL DEFAULT '', -- '' as first consumed; the dead letter's position when replayed from dlq (walked again)
    shard int NOT NULL,
    shards int NOT NULL,
    event bytea NOT NULL,             -- the CloudEvent as consumed, decided from again on every page
    origin text NOT NULL,             -- topic/partition@offset it was consumed at (for a dead letter)
    after_user text,                  -- the cursor: the last user id done (NULL: from the start of the range)
    upto_user text,                   -- the range ends here, inclusive (NULL: no end)
    routed bigint NOT NULL DEFAULT 0, -- users decided so far
    lease_owner text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (namespace, event_source, event_id, template, generation, shard)
);

CREATE INDEX broadcasts_open ON router.broadcasts (namespace, created_at) WHERE finished_at IS NULL;
