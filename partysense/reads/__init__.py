"""Reads shared by many askers: snapshots, replays, seed floors, the event directory."""
