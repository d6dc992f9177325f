"""The WebSocket connection: limits, frames, the outbox, one send() per turn, the upgrade."""
