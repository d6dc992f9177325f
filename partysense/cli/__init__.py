"""partysense-db: install, tail, token; apart from the daemon."""
