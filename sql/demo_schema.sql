-- A stand-in for the PartySense tables, column for column as Django made them,
-- for tests, benchmarks and the embedded demo. Idempotent. Never run this
-- against the real database: it has these tables already.

CREATE TABLE IF NOT EXISTS music_artist (
    id serial PRIMARY KEY,
    name varchar(256) NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS music_track (
    id serial PRIMARY KEY,
    artist_id integer NOT NULL REFERENCES music_artist (id) DEFERRABLE INITIALLY DEFERRED,
    name varchar(256)
);
CREATE INDEX IF NOT EXISTS music_track_artist_id ON music_track (artist_id);

CREATE OR REPLACE VIEW music_view AS
    SELECT music_track.id, music_track.name, music_artist.name AS artist
    FROM music_track LEFT JOIN music_artist ON music_artist.id = music_track.artist_id;

CREATE TABLE IF NOT EXISTS event_event (
    id serial PRIMARY KEY,
    title varchar(70) NOT NULL,
    date date,
    description text NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS event_vote (
    id serial PRIMARY KEY,
    is_positive boolean NOT NULL DEFAULT true,
    event_id integer NOT NULL REFERENCES event_event (id) DEFERRABLE INITIALLY DEFERRED,
    track_id integer NOT NULL REFERENCES music_track (id) DEFERRABLE INITIALLY DEFERRED,
    user_id integer
);
CREATE INDEX IF NOT EXISTS event_vote_event_id ON event_vote (event_id);
CREATE INDEX IF NOT EXISTS event_vote_track_id ON event_vote (track_id);
