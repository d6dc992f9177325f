"""JSON logs for log shippers: ``twistd --logger partysense.process.logs.json_observer``.

One JSON object per line on standard output, with the event's named fields
as keys, so a shipper (journald, Vector, Fluent Bit, Promtail) can filter on
``level`` or ``peer`` without parsing sentences::

    {"time": "2026-11-28T06:12:01.245Z", "level": "info", "namespace": "partysense.tap",
     "message": "partysense-live listening on tcp:18854, ...", "port": "tcp:18854", ...}

Flat rather than Twisted's own ``eventAsJSON`` (which nests the level and the
logger under ``log_*`` keys meant for reloading events into Twisted, not for
searching). Fields that are not JSON values are written as their ``repr``.

twistd ignores ``--logfile`` when ``--logger`` is given: run with ``-n`` and
let systemd (or a pipe) take standard output; docs/operations.md shows how.

Capped files: ``twistd --logger partysense.process.logs.capped_file_observer``
writes twistd's usual text lines to ``$PARTYSENSE_LOG_FILE``, rotated every
``$PARTYSENSE_LOG_MAX_BYTES`` (10 MB) and keeping ``$PARTYSENSE_LOG_FILES``
(10) old files. twistd's own ``--logfile`` rotates at 1 MB and never deletes
one: its disk use grows without end.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent, textFileLogObserver
from twisted.python.logfile import LogFile
from zope.interface import implementer

# Keys twisted.python.log adds to old-style events; they repeat "message".
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "why", "failure",
                          "printed"})


def _iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def flatten(event: LogEvent) -> dict[str, Any]:
    """The record written for one event: time, level, namespace, message, fields."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    legacy = "isError" in event and "message" in event
    for key, value in event.items():
        if key.startswith("log_") or key in record or (legacy and key in _LEGACY_KEYS):
            continue
        record[key] = value
    return record


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one line of JSON to ``out`` and flushes it."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        record = flatten(event)
        try:
            line = json.dumps(record, ensure_ascii=False, default=repr, allow_nan=False)
        except ValueError:  # a circular or NaN field: keep the sentence, drop the fields
            line = json.dumps({key: record[key] for key in ("time", "level", "namespace",
                                                             "message")}, ensure_ascii=False)
        self._out.write(line + "\n")
        self._out.flush()


def json_observer() -> JSONLinesObserver:
    """The factory twistd's ``--logger`` calls: JSON lines on standard output."""
    return JSONLinesObserver(sys.stdout)


LOG_FILE_ENV = "PARTYSENSE_LOG_FILE"
LOG_MAX_BYTES_ENV = "PARTYSENSE_LOG_MAX_BYTES"
LOG_FILES_ENV = "PARTYSENSE_LOG_FILES"


def _positive(name: str, default: int) -> int:
    value = os.environ.get(name) or str(default)
    if not (value.isascii() and value.isdigit() and int(value) > 0):
        raise SystemExit(f"{name} must be a positive whole number, not {value!r}")
    return int(value)


def capped_file_observer() -> ILogObserver:
    """The factory twistd's ``--logger`` calls: twistd's text lines in a file of at
    most ``$PARTYSENSE_LOG_MAX_BYTES``, with ``$PARTYSENSE_LOG_FILES`` old ones kept."""
    log_file = LogFile.fromFullPath(os.environ.get(LOG_FILE_ENV) or "twistd.log",
                                    rotateLength=_positive(LOG_MAX_BYTES_ENV, 10_000_000),
                                    maxRotatedFiles=_positive(LOG_FILES_ENV, 10))
    return textFileLogObserver(log_file)
