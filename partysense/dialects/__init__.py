"""What a client may say and hear: the seed and v2 sessions, tokens, access."""
