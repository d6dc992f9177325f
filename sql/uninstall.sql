-- partysense-live, the database side removed: the reverse of install.sql.
-- Run by reversing the Django app's migration (`manage.py migrate
-- partysense_live zero`); idempotent. It drops the triggers on event_vote,
-- the functions and the change log (a daemon still running loses its history:
-- stop it first). The old service's my_trigger / firehose_trigger, which
-- install.sql dropped, do not come back. event_vote and its votes stay.

DROP TRIGGER IF EXISTS partysense_vote_insert ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_update ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_delete ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_truncate ON event_vote;

DROP FUNCTION IF EXISTS partysense_vote_changed();
DROP FUNCTION IF EXISTS partysense_vote_truncated();
DROP FUNCTION IF EXISTS partysense_trim(double precision, integer);
DROP FUNCTION IF EXISTS partysense_rotate_key(double precision);
DROP FUNCTION IF EXISTS partysense_retire_keys();
DROP FUNCTION IF EXISTS partysense_sign(text);
DROP FUNCTION IF EXISTS partysense_presence_report(uuid, bigint[], integer[], double precision);
DROP FUNCTION IF EXISTS partysense_record(text, bigint, bigint, bigint, boolean, boolean);
DROP FUNCTION IF EXISTS partysense_notified_payload(
    bigint, text, bigint, bigint, text, bigint, text, text, boolean, boolean, timestamptz);
DROP FUNCTION IF EXISTS partysense_payload(
    bigint, text, bigint, bigint, text, bigint, text, text, boolean, boolean, boolean,
    timestamptz);

-- The WAL mode's (sql/wal.sql); event_vote keeps REPLICA IDENTITY FULL, and a
-- relay's slot is dropped by `partysense-db install` (listen) or by hand.
DROP PUBLICATION IF EXISTS partysense;
DROP PUBLICATION IF EXISTS partysense_truncated;
DROP FUNCTION IF EXISTS partysense_relay_write(pg_lsn[], timestamptz[], text[], bigint[],
    bigint[], bigint[], boolean[], boolean[]);
DROP FUNCTION IF EXISTS partysense_relay_reset(text, pg_lsn);
DROP FUNCTION IF EXISTS partysense_vote_truncated_wal();
DROP TABLE IF EXISTS partysense_tally;
DROP TABLE IF EXISTS partysense_relay;
DROP TABLE IF EXISTS partysense_truncated;

DROP TABLE IF EXISTS partysense_change;
DROP TABLE IF EXISTS partysense_presence;
DROP TABLE IF EXISTS partysense_key;
