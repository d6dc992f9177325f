"""The token in a URL's query: read and hidden by one rule.

A client that can only set a URL (a browser's WebSocket, an EventSource)
sends its token as ``?token=<jwt>``. The WebSocket and the SSE stream read it
with :func:`query_token`, and the access log hides it with
:func:`redact_uri`, both through :func:`_fields`: whatever spelling one
accepts as a token (``%74oken=``, ``;token=``, ``+`` for a space), the other
hides. Before, the log hid only a literal ``token=``, so ``?%74oken=<jwt>``
let a client in and left its token in the log.

The query is everything after the first ``?`` (a ``#`` included, as
twisted.web reads it); fields are split at ``&`` and ``;`` (twisted.web's
split, a superset of the standard library's); names and values are
percent-decoded with ``+`` as a space. The first non-empty ``token`` wins.
The log hides a little more than the reader takes: any case of the name
(``TOKEN=``), since a token sent under the wrong name is refused but still
a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

TOKEN_NAME = b"token"
HIDDEN = b"***"

_SEPARATORS = re.compile(rb"([&;])")


def _decode(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _fields(query: bytes, any_case: bool = False) -> Iterator[tuple[bytes, bool]]:
    """Each piece of ``query`` (separators included, so that they join back into
    it) and whether it is a token field with a value (``any_case``: named
    ``token`` in any case)."""
    for piece in _SEPARATORS.split(query):
        name, equals, value = piece.partition(b"=")
        if not (equals and value):
            yield piece, False
            continue
        decoded = _decode(name)
        yield piece, (decoded.lower() if any_case else decoded) == TOKEN_NAME


def query_token(uri: bytes) -> str | None:
    """The token ``uri``'s query carries, or None."""
    _, question, query = uri.partition(b"?")
    if not question:
        return None
    for piece, is_token in _fields(query):
        if is_token:
            return _decode(piece.partition(b"=")[2]).decode("utf-8", "replace")
    return None


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with the value of every token field its query carries as ``***``."""
    path, question, query = uri.partition(b"?")
    if not question:
        return uri
    pieces = [piece.partition(b"=")[0] + b"=" + HIDDEN if is_token else piece
              for piece, is_token in _fields(query, any_case=True)]
    return path + question + b"".join(pieces)
