-- partysense-live's WAL mode: `partysense-db install --source wal` runs this
-- after install.sql (docs/operations.md, "The WAL source"). Idempotent.
--
-- In this mode the daemon reads vote changes from a logical replication slot
-- (the built-in pgoutput plugin) instead of from NOTIFY and the change log:
-- the voter's transaction carries no trigger, no lock that orders commits and
-- no NOTIFY, and commits at the rate of a plain INSERT (docs/scaling.md).
-- A database is in one mode at a time: `partysense-db install` (listen, the
-- default) puts the triggers back.

-- The triggers that log, lock and notify go.
DROP TRIGGER IF EXISTS partysense_vote_insert ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_update ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_delete ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_truncate ON event_vote;

-- An update must say what the vote was (for `prev`) and a delete which
-- event and track it leaves: the WAL carries the whole old row only with
-- REPLICA IDENTITY FULL (a vote row is five integers and a boolean, so this
-- adds a few dozen bytes of WAL to an update or a delete, none to an insert).
ALTER TABLE event_vote REPLICA IDENTITY FULL;

-- What the slot streams: event_vote's inserts, updates, deletes and
-- truncates, nothing else.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'partysense') THEN
        CREATE PUBLICATION partysense FOR TABLE event_vote;
    ELSE
        ALTER PUBLICATION partysense SET TABLE event_vote;
    END IF;
END;
$$;
