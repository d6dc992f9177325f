"""partysense-live: the realtime service of PartySense."""
