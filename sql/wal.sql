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

-- TRUNCATE writes no row to the WAL: before it, the votes it removes are
-- copied here (one statement, only when someone truncates event_vote), and
-- published for inserts only, so the relay announces each as a delete, as
-- the listen mode's trigger does. The rows left from the previous TRUNCATE
-- go first.
CREATE TABLE IF NOT EXISTS partysense_truncated (
    vote_id bigint NOT NULL,
    event_id bigint NOT NULL,
    track_id bigint NOT NULL,
    up boolean NOT NULL
);
REVOKE ALL ON partysense_truncated FROM PUBLIC;

CREATE OR REPLACE FUNCTION partysense_vote_truncated_wal() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    DELETE FROM partysense_truncated;
    INSERT INTO partysense_truncated (vote_id, event_id, track_id, up)
        SELECT id, event_id, track_id, is_positive FROM event_vote ORDER BY id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER partysense_vote_truncate
    BEFORE TRUNCATE ON event_vote
    FOR EACH STATEMENT EXECUTE FUNCTION partysense_vote_truncated_wal();

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'partysense_truncated') THEN
        CREATE PUBLICATION partysense_truncated FOR TABLE partysense_truncated
            WITH (publish = 'insert');
    END IF;
END;
$$;

-- The tallies as of the change log's newest seq: written by the relay in the
-- same transaction as the log rows they count, so that a v2 snapshot (the
-- tallies and max(seq), one REPEATABLE READ snapshot) is exact, as
-- event_vote and the log are in the listen mode (docs/exactness.md §8).
CREATE TABLE IF NOT EXISTS partysense_tally (
    event_id bigint NOT NULL,
    track_id bigint NOT NULL,
    up bigint NOT NULL,
    down bigint NOT NULL,
    PRIMARY KEY (event_id, track_id)
);

-- Where the relay is: the end of the last transaction it wrote to the log
-- (a relay that takes the slot over skips what is at or before it), and the
-- slot it reads.
CREATE TABLE IF NOT EXISTS partysense_relay (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    slot text NOT NULL,
    end_lsn pg_lsn NOT NULL,
    reset_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON partysense_tally, partysense_relay FROM PUBLIC;

-- A new slot, or one that lost its WAL: the tallies are counted again from
-- event_vote in the slot's own exported snapshot (the caller set it: SET
-- TRANSACTION SNAPSHOT), which is exactly what the slot streams after, and
-- the change log is emptied, so that no cursor from before can be taken for
-- one without a gap (every v2 client resumes with a fresh snapshot, the
-- listeners start over from the log's end: docs/exactness.md §4).
CREATE OR REPLACE FUNCTION partysense_relay_reset(p_slot text, p_lsn pg_lsn)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    PERFORM pg_advisory_xact_lock('partysense_change'::regclass::oid::integer, 0);
    DELETE FROM partysense_change;
    -- One seq never used: the next change is at least two past any cursor a
    -- client holds, which the log's checks take for changes they cannot have.
    PERFORM nextval(pg_get_serial_sequence('partysense_change', 'seq'));
    DELETE FROM partysense_tally;
    INSERT INTO partysense_tally (event_id, track_id, up, down)
        SELECT event_id, track_id, count(*) FILTER (WHERE is_positive),
               count(*) FILTER (WHERE NOT is_positive)
        FROM event_vote GROUP BY event_id, track_id;
    INSERT INTO partysense_relay (slot, end_lsn) VALUES (p_slot, p_lsn)
        ON CONFLICT (one) DO UPDATE SET slot = excluded.slot, end_lsn = excluded.end_lsn,
                                        reset_at = now();
END;
$$;

-- One batch of changes, in commit order, from the relay: logged (seq in that
-- order: the rows are inserted in the batch's order, under the same lock as
-- the listen mode's trigger, held to the end of the relay's transaction),
-- counted into the tallies, and announced: each change on its event's
-- channel, then on the firehose, signed as partysense_sign signs, in seq
-- order. Changes of transactions at or before the relay's end_lsn were
-- written already (by this relay before a reconnect, or by another):
-- skipped.
--
-- One set-based statement for all of it, as cheap per change as we could
-- make it (docs/scaling.md, "Past the NOTIFY ceiling"): the log rows are
-- announced from the INSERT's RETURNING (no read of the log back); the
-- signing key is read once per batch, not once per change; the payload is
-- partysense_payload's JSON written out here as text (called,
-- partysense_notified_payload runs two SQL functions per change through the
-- function executor, and json_build_object looks up twelve types' output
-- functions at each call: together more than the rest of the change); the
-- NOTIFYs are sent in the
-- order of a sorted subquery that the aggregate consumes row by row. What it
-- sends is byte for byte partysense_sign(partysense_notified_payload(...))
-- of the log row (tests/test_walrelay.py holds it to that).
CREATE OR REPLACE FUNCTION partysense_relay_write(
    p_end_lsn pg_lsn[], p_committed timestamptz[], p_op text[], p_vote bigint[],
    p_event bigint[], p_track bigint[], p_up boolean[], p_prev boolean[]
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_done pg_lsn;
    v_written bigint;
    v_key_id integer;
    v_inner bytea;
    v_outer bytea;
BEGIN
    PERFORM pg_advisory_xact_lock('partysense_change'::regclass::oid::integer, 0);
    SELECT end_lsn INTO v_done FROM partysense_relay;
    IF v_done IS NULL THEN
        RAISE EXCEPTION 'the relay was never reset (partysense_relay is empty)';
    END IF;
    -- The key partysense_sign would use (none: the payloads go unsigned, as
    -- partysense_sign returns them).
    SELECT id, inner_pad, outer_pad INTO v_key_id, v_inner, v_outer FROM partysense_key
        WHERE activates <= now() ORDER BY id DESC LIMIT 1;
    -- nextval() is evaluated row by row in the ORDER BY's order: seq follows
    -- the batch's order, which is the WAL's commit order.
    WITH logged AS (
        INSERT INTO partysense_change (committed_at, op, vote_id, event_id, track_id, up,
                                       prev_up)
        SELECT x.committed_at, x.op, x.vote_id, x.event_id, x.track_id, x.up, x.prev_up
        FROM unnest(p_end_lsn, p_committed, p_op, p_vote, p_event, p_track, p_up, p_prev)
             WITH ORDINALITY AS x(end_lsn, committed_at, op, vote_id, event_id, track_id,
                                  up, prev_up, n)
        WHERE x.end_lsn > v_done
        ORDER BY x.n
        RETURNING *
    ), tallied AS (
        INSERT INTO partysense_tally AS t (event_id, track_id, up, down)
        SELECT l.event_id, l.track_id,
               sum(CASE WHEN l.op <> 'delete' AND l.up THEN 1 ELSE 0 END
                   - CASE WHEN l.op <> 'insert' AND l.prev_up THEN 1 ELSE 0 END),
               sum(CASE WHEN l.op <> 'delete' AND NOT l.up THEN 1 ELSE 0 END
                   - CASE WHEN l.op <> 'insert' AND NOT l.prev_up THEN 1 ELSE 0 END)
        FROM logged l GROUP BY l.event_id, l.track_id
        ON CONFLICT (event_id, track_id)
        DO UPDATE SET up = t.up + excluded.up, down = t.down + excluded.down
        RETURNING 1
    ), payloads AS (
        -- partysense_notified_payload, in line: the whole payload, or past
        -- 7,900 bytes the shortened one (rare: partysense_payload called).
        SELECT l.seq, l.event_id,
               CASE WHEN octet_length(w.payload) > 7900
                    THEN partysense_payload(l.seq, l.op, l.vote_id, l.event_id,
                                            left(e.title::text, 300), l.track_id,
                                            left(m.name::text, 300),
                                            left(m.artist::text, 300), l.up, l.prev_up,
                                            true, l.committed_at)
                    ELSE w.payload END AS payload
        FROM logged l
        LEFT JOIN event_event e ON e.id = l.event_id
        LEFT JOIN music_view m ON m.id = l.track_id
        -- json_build_object's text, written out: it looks up the output
        -- function of each of its twelve arguments' types at every call;
        -- here only the three names go through to_json (its escaping).
        CROSS JOIN LATERAL (SELECT
            '{"eid" : ' || l.event_id
            || ', "event" : ' || coalesce(to_json(e.title::text)::text, 'null')
            || ', "track" : ' || coalesce(to_json(m.name::text)::text, 'null')
            || ', "artist" : ' || coalesce(to_json(m.artist::text)::text, 'null')
            || ', "tid" : ' || l.track_id
            || ', "up" : ' || CASE WHEN l.up THEN 'true' WHEN NOT l.up THEN 'false'
                                   ELSE 'null' END
            || ', "op" : "' || l.op
            || '", "vote" : ' || l.vote_id
            || ', "prev" : ' || CASE WHEN l.prev_up THEN 'true' WHEN NOT l.prev_up
                                     THEN 'false' ELSE 'null' END
            || ', "seq" : ' || l.seq
            || ', "truncated" : false, "ts" : '
            || coalesce(round(extract(epoch FROM l.committed_at)::numeric, 3)::text, 'null')
            || '}' AS payload) w
    ), signed AS (
        SELECT p.seq, p.event_id,
               CASE WHEN v_key_id IS NULL THEN p.payload
                    ELSE 'ps1 ' || v_key_id || ' '
                         || encode(sha256(v_outer || sha256(v_inner
                                                            || convert_to(p.payload, 'UTF8'))),
                                   'hex')
                         || ' ' || p.payload END AS envelope
        FROM payloads p
    )
    SELECT count(pg_notify(a.channel, a.envelope)) / 2 INTO v_written
    FROM (SELECT CASE WHEN k.k = 0 THEN 'event_' || s.event_id::text ELSE 'firehose' END
                     AS channel, s.envelope
          FROM signed s CROSS JOIN (VALUES (0), (1)) AS k(k)
          ORDER BY s.seq, k.k) a;
    IF v_written > 0 THEN
        UPDATE partysense_relay SET end_lsn = (SELECT max(l) FROM unnest(p_end_lsn) l);
    END IF;
    RETURN v_written;
END;
$$;

REVOKE ALL ON FUNCTION partysense_relay_reset(text, pg_lsn) FROM PUBLIC;
REVOKE ALL ON FUNCTION partysense_relay_write(pg_lsn[], timestamptz[], text[], bigint[],
    bigint[], bigint[], boolean[], boolean[]) FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION partysense_relay_reset(text, pg_lsn) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_relay_write(pg_lsn[], timestamptz[], text[], '
                   'bigint[], bigint[], bigint[], boolean[], boolean[]) '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION partysense_vote_truncated_wal() '
                   'SET search_path = pg_catalog, %I, pg_temp', current_schema());
END;
$$;
