# The twistd dropin: one line, naming the real module as a string so that
# `twistd --help` imports nothing of ours until the command is chosen.
from twisted.application.service import ServiceMaker

partysense_live = ServiceMaker(
    "partysense-live",
    "partysense.tap",
    "Push PartySense votes from PostgreSQL to WebSocket clients.",
    "partysense-live",
)
