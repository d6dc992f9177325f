-- The old service's triggers (../shared/seed-realtime-README.md), for the asyncio
-- reference (bench/asyncio_bridge.py): what PostgreSQL does per vote for the floor of
-- a Python bridge. Two changes only: each payload also carries "vote" (the vote's id,
-- which the load generator matches frames by), and the JSON is built with
-- json_build_object, as the seed's README itself advises (its string concatenation
-- breaks on a quote in a name). No change log, no lock, no signature: nothing exact.
-- bench/database.py swaps these in for the asyncio side and ours back afterwards.
DROP TRIGGER IF EXISTS partysense_vote_insert ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_update ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_delete ON event_vote;
DROP TRIGGER IF EXISTS partysense_vote_truncate ON event_vote;

CREATE OR REPLACE FUNCTION notify_firehose() RETURNS trigger AS $$
DECLARE
  track music_view%ROWTYPE;
  event event_event%ROWTYPE;
BEGIN
  SELECT * INTO track FROM music_view WHERE id = NEW.track_id;
  SELECT * INTO event FROM event_event WHERE id = NEW.event_id;
  PERFORM pg_notify('firehose', json_build_object(
    'eid', NEW.event_id, 'event', event.title, 'track', track.name, 'artist', track.artist,
    'tid', NEW.track_id, 'up', NEW.is_positive, 'vote', NEW.id)::text);
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION notify_trigger() RETURNS trigger AS $$
DECLARE
  track music_view%ROWTYPE;
BEGIN
  SELECT * INTO track FROM music_view WHERE id = NEW.track_id;
  PERFORM pg_notify('event_' || NEW.event_id, json_build_object(
    'track', track.name, 'artist', track.artist, 'tid', NEW.track_id,
    'up', NEW.is_positive, 'vote', NEW.id)::text);
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS my_trigger ON event_vote;
CREATE TRIGGER my_trigger AFTER INSERT ON event_vote
  FOR EACH ROW EXECUTE PROCEDURE notify_trigger();
DROP TRIGGER IF EXISTS firehose_trigger ON event_vote;
CREATE TRIGGER firehose_trigger AFTER INSERT ON event_vote
  FOR EACH ROW EXECUTE PROCEDURE notify_firehose();
