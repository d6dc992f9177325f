-- partysense-live, the database side: a change log, the notify function and
-- the triggers on event_vote. Idempotent: safe to run again on every upgrade.
-- Installed by `partysense-db install --dsn DSN`; see docs/operations.md.
--
-- Why a change log: NOTIFY keeps nothing for a listener that is away, so every
-- vote change is also written to partysense_change, in the same transaction,
-- and the daemon reads back what it missed. Why the triggers are deferred and
-- take a lock: `seq` must follow commit order, not insert order, so that "all
-- changes after seq N" is an exact question (docs/exactness.md).

CREATE TABLE IF NOT EXISTS partysense_change (
    seq bigserial PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    op text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    vote_id bigint NOT NULL,
    event_id bigint NOT NULL,
    track_id bigint NOT NULL,
    up boolean NOT NULL,
    prev_up boolean
);

-- Ids are bigint: Django's BigAutoField (its default since 3.2) makes bigint
-- ids, and a vote must never fail because its id passed 2^31. Logs made by
-- the first release had integer columns; widen them once.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'partysense_change'
                 AND column_name = 'vote_id' AND data_type = 'integer') THEN
        ALTER TABLE partysense_change
            ALTER COLUMN vote_id TYPE bigint,
            ALTER COLUMN event_id TYPE bigint,
            ALTER COLUMN track_id TYPE bigint;
    END IF;
END;
$$;
CREATE INDEX IF NOT EXISTS partysense_change_event_seq ON partysense_change (event_id, seq);
CREATE INDEX IF NOT EXISTS partysense_change_committed_at ON partysense_change (committed_at);

-- The payload every client receives. The seed's keys (eid, event, track,
-- artist, tid, up) come first and keep their meaning; op, vote, prev and seq
-- let a client keep exact tallies; ts (the commit time, epoch seconds) lets
-- the daemon measure its delay. json_build_object escapes quotes,
-- backslashes and control characters, and a NULL name stays a JSON null.
-- p_committed came later: callers that omit it get "ts": null. Earlier
-- versions (integer ids, no p_committed) are dropped first, or two functions
-- would match one call.
DROP FUNCTION IF EXISTS partysense_payload(
    bigint, text, integer, integer, text, integer, text, text, boolean, boolean, boolean);
DROP FUNCTION IF EXISTS partysense_payload(
    bigint, text, integer, integer, text, integer, text, text, boolean, boolean, boolean,
    timestamptz);
CREATE OR REPLACE FUNCTION partysense_payload(
    p_seq bigint, p_op text, p_vote bigint, p_event bigint, p_title text,
    p_track bigint, p_track_name text, p_artist text, p_up boolean, p_prev boolean,
    p_truncated boolean, p_committed timestamptz DEFAULT NULL
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object(
        'eid', p_event, 'event', p_title,
        'track', p_track_name, 'artist', p_artist,
        'tid', p_track, 'up', p_up,
        'op', p_op, 'vote', p_vote, 'prev', p_prev, 'seq', p_seq,
        'truncated', p_truncated,
        'ts', round(extract(epoch FROM p_committed)::numeric, 3)
    )::text
$$;

-- The payload as notified: partysense_payload, shortened when it would not
-- fit. pg_notify raises past 8000 bytes, which would abort the voter's
-- transaction. Shortened names escape to at most 6 bytes a character, so
-- three of 300 characters stay far below the limit. The trigger
-- (partysense_record) and the daemon's reads of the log
-- (partysense/db/changelog.py) both call this one function, so a change read
-- from the log is, byte for byte, the one that was notified. PL/pgSQL, not
-- SQL: a SQL function with a subquery is not inlined, and was planned again
-- in every voter's transaction (~0.1 ms of the trigger's ~0.35 ms), and built
-- the JSON twice; PL/pgSQL keeps its plan for the session.
CREATE OR REPLACE FUNCTION partysense_notified_payload(
    p_seq bigint, p_op text, p_vote bigint, p_event bigint, p_title text,
    p_track bigint, p_track_name text, p_artist text, p_up boolean, p_prev boolean,
    p_committed timestamptz
) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_payload text := partysense_payload(p_seq, p_op, p_vote, p_event, p_title, p_track,
                                         p_track_name, p_artist, p_up, p_prev, false,
                                         p_committed);
BEGIN
    IF octet_length(v_payload) > 7900 THEN
        v_payload := partysense_payload(p_seq, p_op, p_vote, p_event, left(p_title, 300),
                                        p_track, left(p_track_name, 300),
                                        left(p_artist, 300), p_up, p_prev, true, p_committed);
    END IF;
    RETURN v_payload;
END;
$$;

-- Signing keys. The trigger signs every notification with the newest key
-- that is active (HMAC-SHA256, docs/security.md), so that the daemon can
-- believe a notification without reading the log back: any role may NOTIFY,
-- but only the owner of these functions and the daemon's role (GRANT SELECT)
-- can read a key. The pads are the key XORed with HMAC's 0x36 and 0x5c,
-- stored so that the trigger computes the HMAC with core sha256() alone (no
-- extension). `partysense-db key rotate` adds a key that signs from a minute
-- later: every daemon reads the keys again every 15 s, so each knows a key
-- before the first notification signed with it. The old keys stay valid
-- until `partysense-db key retire` (docs/operations.md).
CREATE TABLE IF NOT EXISTS partysense_key (
    id integer PRIMARY KEY CHECK (id > 0),
    secret bytea NOT NULL CHECK (octet_length(secret) = 32),
    inner_pad bytea NOT NULL CHECK (octet_length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (octet_length(outer_pad) = 64),
    activates timestamptz NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON partysense_key FROM PUBLIC;

-- A new key, signing from p_delay seconds on (at least 30: twice the
-- daemons' 15 s between reads of the keys). 32 bytes from gen_random_uuid(),
-- PostgreSQL's strong random source (two UUIDs: 244 random bits). Returns
-- its id; ids only grow, so "the newest active key" is the one that signs.
CREATE OR REPLACE FUNCTION partysense_rotate_key(p_delay double precision DEFAULT 60)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_secret bytea := uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());
    v_inner bytea := decode(repeat('36', 64), 'hex');
    v_outer bytea := decode(repeat('5c', 64), 'hex');
    v_id integer;
BEGIN
    FOR i IN 0..31 LOOP
        v_inner := set_byte(v_inner, i, get_byte(v_secret, i) # 54);   -- 0x36
        v_outer := set_byte(v_outer, i, get_byte(v_secret, i) # 92);   -- 0x5c
    END LOOP;
    -- Two rotations at once take turns, so ids stay unique.
    LOCK TABLE partysense_key IN SHARE ROW EXCLUSIVE MODE;
    SELECT coalesce(max(id), 0) + 1 INTO v_id FROM partysense_key;
    INSERT INTO partysense_key (id, secret, inner_pad, outer_pad, activates)
        VALUES (v_id, v_secret, v_inner, v_outer,
                now() + greatest(coalesce(p_delay, 60), 30) * interval '1 second');
    RETURN v_id;
END;
$$;

-- Forget the keys older than the one signing now; returns how many went. A
-- daemon still holding a notification signed with a retired key ignores it,
-- so retire a minute or more after the new key began to sign.
CREATE OR REPLACE FUNCTION partysense_retire_keys() RETURNS bigint
LANGUAGE sql SECURITY DEFINER AS $$
    WITH signing AS (
        SELECT max(id) AS id FROM partysense_key WHERE activates <= now()
    ), gone AS (
        DELETE FROM partysense_key k USING signing s WHERE k.id < s.id RETURNING 1
    ) SELECT count(*) FROM gone
$$;

-- A change's payload as notified: in the envelope the daemon checks
-- (partysense/core/signature.py), 'ps1 <key id> <HMAC-SHA256, hex> <payload>',
-- 81 bytes more than the payload, which stays under 7,900; signed with the
-- newest key that has begun to sign (the payload as it is when there is none).
-- SECURITY DEFINER: it reads the keys as their owner. Whoever may call it can
-- sign anything, so only the owner may (REVOKE below), and partysense_record
-- (running as the owner) does.
CREATE OR REPLACE FUNCTION partysense_sign(p_payload text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER AS $$
DECLARE
    v_key record;
BEGIN
    SELECT id, inner_pad, outer_pad INTO v_key FROM partysense_key
        WHERE activates <= now() ORDER BY id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN p_payload;
    END IF;
    RETURN 'ps1 ' || v_key.id || ' '
        || encode(sha256(v_key.outer_pad
                         || sha256(v_key.inner_pad || convert_to(p_payload, 'UTF8'))), 'hex')
        || ' ' || p_payload;
END;
$$;

-- A first install makes the first key, signing at once; an upgrade keeps the
-- keys it has.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM partysense_key) THEN
        PERFORM partysense_rotate_key();
        UPDATE partysense_key SET activates = now();
    END IF;
END;
$$;

-- Record one change and announce it on event_<id> and firehose. SECURITY
-- DEFINER: it runs as the role that installed it, so the app's role needs
-- EXECUTE on it and nothing on the change log: only this function writes
-- there, and the daemon believes only the log (docs/security.md). Nobody else
-- may call it (REVOKE below), or anybody could record a vote that never was.
DROP FUNCTION IF EXISTS partysense_record(text, integer, integer, integer, boolean, boolean);
CREATE OR REPLACE FUNCTION partysense_record(
    p_op text, p_vote bigint, p_event bigint, p_track bigint, p_up boolean, p_prev boolean
) RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_seq bigint;
    v_committed timestamptz;
    v_title text;
    v_track_name text;
    v_artist text;
    v_payload text;
BEGIN
    INSERT INTO partysense_change (op, vote_id, event_id, track_id, up, prev_up)
        VALUES (p_op, p_vote, p_event, p_track, p_up, p_prev)
        RETURNING seq, committed_at INTO v_seq, v_committed;
    SELECT name, artist INTO v_track_name, v_artist FROM music_view WHERE id = p_track;
    SELECT title INTO v_title FROM event_event WHERE id = p_event;
    v_payload := partysense_sign(partysense_notified_payload(
        v_seq, p_op, p_vote, p_event, v_title, p_track, v_track_name, v_artist, p_up, p_prev,
        v_committed));
    PERFORM pg_notify('event_' || p_event::text, v_payload);
    PERFORM pg_notify('firehose', v_payload);
END;
$$;

CREATE OR REPLACE FUNCTION partysense_vote_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- These triggers run at COMMIT (deferred). Holding this lock until the
    -- transaction ends makes seq numbers follow commit order; NOTIFY itself
    -- already serialises notifying commits on a lock of its own.
    PERFORM pg_advisory_xact_lock('partysense_change'::regclass::oid::integer, 0);
    IF TG_OP = 'INSERT' THEN
        PERFORM partysense_record('insert', NEW.id, NEW.event_id, NEW.track_id,
                                  NEW.is_positive, NULL);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM partysense_record('delete', OLD.id, OLD.event_id, OLD.track_id,
                                  OLD.is_positive, OLD.is_positive);
    ELSIF OLD.event_id IS DISTINCT FROM NEW.event_id OR OLD.track_id IS DISTINCT FROM NEW.track_id THEN
        -- A vote moved to another event or track: for tallies that is a
        -- removal from the old place and an arrival at the new one.
        PERFORM partysense_record('delete', OLD.id, OLD.event_id, OLD.track_id,
                                  OLD.is_positive, OLD.is_positive);
        PERFORM partysense_record('insert', NEW.id, NEW.event_id, NEW.track_id,
                                  NEW.is_positive, NULL);
    ELSE
        PERFORM partysense_record('update', NEW.id, NEW.event_id, NEW.track_id,
                                  NEW.is_positive, OLD.is_positive);
    END IF;
    RETURN NULL;
END;
$$;

-- The seed's insert-only triggers announced every down-vote as an up-vote;
-- they are replaced, not kept beside ours.
DROP TRIGGER IF EXISTS my_trigger ON event_vote;
DROP TRIGGER IF EXISTS firehose_trigger ON event_vote;

DROP TRIGGER IF EXISTS partysense_vote_insert ON event_vote;
CREATE CONSTRAINT TRIGGER partysense_vote_insert
    AFTER INSERT ON event_vote
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION partysense_vote_changed();

DROP TRIGGER IF EXISTS partysense_vote_update ON event_vote;
CREATE CONSTRAINT TRIGGER partysense_vote_update
    AFTER UPDATE OF is_positive, event_id, track_id ON event_vote
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.is_positive IS DISTINCT FROM NEW.is_positive
          OR OLD.event_id IS DISTINCT FROM NEW.event_id
          OR OLD.track_id IS DISTINCT FROM NEW.track_id)
    EXECUTE FUNCTION partysense_vote_changed();

DROP TRIGGER IF EXISTS partysense_vote_delete ON event_vote;
CREATE CONSTRAINT TRIGGER partysense_vote_delete
    AFTER DELETE ON event_vote
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION partysense_vote_changed();

-- TRUNCATE fires no row triggers: without this, the votes it removes would
-- stay in every client's tallies. Each one is announced as a delete, at the
-- TRUNCATE (a statement trigger cannot be deferred); the lock, held until
-- the end of the transaction, still keeps seq in commit order.
CREATE OR REPLACE FUNCTION partysense_vote_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    PERFORM pg_advisory_xact_lock('partysense_change'::regclass::oid::integer, 0);
    FOR v IN SELECT id, event_id, track_id, is_positive FROM event_vote ORDER BY id LOOP
        PERFORM partysense_record('delete', v.id, v.event_id, v.track_id,
                                  v.is_positive, v.is_positive);
    END LOOP;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS partysense_vote_truncate ON event_vote;
CREATE TRIGGER partysense_vote_truncate
    BEFORE TRUNCATE ON event_vote
    FOR EACH STATEMENT EXECUTE FUNCTION partysense_vote_truncated();

-- Trimming the change log (the daemon's --retention), oldest first, in
-- batches, never the newest change (a v2 cursor is max(seq)). SECURITY
-- DEFINER so that the daemon's role needs EXECUTE on it and no DELETE on the
-- log: it can only ever remove changes older than it asks, never the recent
-- ones nor chosen ones.
CREATE OR REPLACE FUNCTION partysense_trim(p_keep double precision, p_batch integer)
RETURNS bigint LANGUAGE sql SECURITY DEFINER AS $$
    WITH doomed AS (
        SELECT seq FROM partysense_change
        WHERE committed_at < now() - greatest(p_keep, 0) * interval '1 second'
          AND seq < (SELECT max(seq) FROM partysense_change)
        ORDER BY committed_at
        LIMIT greatest(p_batch, 0)
    ), trimmed AS (
        DELETE FROM partysense_change c USING doomed d WHERE c.seq = d.seq RETURNING 1
    ) SELECT count(*) FROM trimmed
$$;

-- Presence: how many clients watch each event, across every daemon of this
-- database. Each daemon, once per --presence-interval, reports its own count
-- per event and reads back the sums in one call (docs/protocol.md,
-- "presence"). A row counts until its `expires`, set by the daemon that wrote
-- it (a few of its intervals): a daemon killed without a goodbye drops out by
-- itself, and daemons with different intervals do not age each other's rows.
-- Counts only, never who: no address, no user, no token is stored.
CREATE TABLE IF NOT EXISTS partysense_presence (
    daemon uuid NOT NULL,
    event_id bigint NOT NULL,
    watchers integer NOT NULL CHECK (watchers > 0),
    seen timestamptz NOT NULL DEFAULT now(),
    expires timestamptz NOT NULL,
    PRIMARY KEY (daemon, event_id)
);
-- Nobody but the function below (it runs as its owner) writes or reads it:
-- a role that can connect must not be able to inflate or read the counts.
REVOKE ALL ON partysense_presence FROM PUBLIC;

-- One daemon's report, and the totals of its events, in one statement:
-- upsert its counts, delete its rows of events it no longer reports, delete
-- expired rows of other daemons (SKIP LOCKED: a collector never waits, so two
-- daemons collecting at once cannot deadlock), then return, for each event it
-- reported, its own count plus every other daemon's unexpired one. The
-- statement's snapshot does not see its own writes: its count comes from the
-- arguments, the others' from the table. Only positive counts are taken (an
-- event given twice counts once), and a row lives at most an hour.
CREATE OR REPLACE FUNCTION partysense_presence_report(
    p_daemon uuid, p_events bigint[], p_watchers integer[], p_lifetime double precision
) RETURNS TABLE (event bigint, total bigint) LANGUAGE sql SECURITY DEFINER AS $$
    WITH mine AS (
        SELECT m.e AS event_id, max(m.w) AS watchers
        FROM unnest(p_events, p_watchers) AS m(e, w)
        WHERE m.e IS NOT NULL AND m.w IS NOT NULL AND m.w > 0
        GROUP BY m.e
    ), reported AS (
        INSERT INTO partysense_presence (daemon, event_id, watchers, seen, expires)
        SELECT p_daemon, mine.event_id, mine.watchers, now(),
               now() + least(greatest(p_lifetime, 0), 3600) * interval '1 second'
        FROM mine
        ON CONFLICT (daemon, event_id) DO UPDATE
            SET watchers = excluded.watchers, seen = excluded.seen, expires = excluded.expires
        RETURNING 1
    ), gone AS (
        DELETE FROM partysense_presence p
        WHERE p.daemon = p_daemon
          AND p.event_id NOT IN (SELECT mine.event_id FROM mine)
        RETURNING 1
    ), expired AS (
        DELETE FROM partysense_presence p
        WHERE (p.daemon, p.event_id) IN (
            SELECT x.daemon, x.event_id FROM partysense_presence x
            WHERE x.expires < now() AND x.daemon <> p_daemon
            FOR UPDATE SKIP LOCKED)
        RETURNING 1
    )
    SELECT t.event_id, sum(t.watchers)::bigint
    FROM (
        SELECT mine.event_id, mine.watchers FROM mine
        UNION ALL
        SELECT o.event_id, o.watchers FROM partysense_presence o
        WHERE o.daemon <> p_daemon AND o.expires >= now()
          AND o.event_id IN (SELECT mine.event_id FROM mine)
    ) t
    GROUP BY t.event_id
$$;

-- Functions that run as their owner are called by whom we say, and find
-- our tables, and pg_catalog's functions, whatever the caller's search_path.
REVOKE ALL ON FUNCTION partysense_record(text, bigint, bigint, bigint, boolean, boolean)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION partysense_trim(double precision, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION partysense_rotate_key(double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION partysense_sign(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION partysense_retire_keys() FROM PUBLIC;
REVOKE ALL ON FUNCTION partysense_presence_report(uuid, bigint[], integer[], double precision)
    FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION partysense_record(text, bigint, bigint, bigint, boolean, '
                   'boolean) SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_trim(double precision, integer) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_rotate_key(double precision) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_retire_keys() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_sign(text) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_presence_report(uuid, bigint[], integer[], '
                   'double precision) SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION partysense_vote_changed() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_vote_truncated() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END;
$$;
