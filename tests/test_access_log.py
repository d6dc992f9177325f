"""The access log's parts (partysense/wire/accesslog.py, querytoken.py, quietlog.py): no
token in a line however it was spelled, a bounded number of lines per address.
Against the daemon: tests/test_access_log_daemon.py."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.web.test.requesthelper import DummyRequest

from partysense.core.quietlog import OTHERS, PerAddress
from partysense.wire import accesslog, protocol
from partysense.wire.accesslog import AccessLog, combined_line
from partysense.wire.querytoken import query_token, redact_uri
from tests import test_access_log_daemon

# -- the one rule: what is read as a token is hidden -------------------------------

SPELLINGS = [b"/?token=T", b"/?%74oken=T", b"/?%74%6F%6B%65%6E=T", b"/?a=1&token=T&b=2",
             b"/?a=1;token=T", b"/?token=&token=T", b"/events/3/stream?x=%26&token=T#f",
             b"http://page.example/?TOKEN=T"]


@pytest.mark.logic
@pytest.mark.parametrize("uri", SPELLINGS)
def test_a_token_the_reader_takes_is_one_the_log_hides(uri: bytes) -> None:
    token = query_token(uri)
    if b"TOKEN" not in uri:  # the reader takes the name in lower case only...
        assert token is not None and token.startswith("T")
    redacted = redact_uri(uri)
    assert b"=T" not in redacted and b"***" in redacted  # ...the log hides any case
    assert query_token(redacted) in (None, "***")


@pytest.mark.logic
def test_the_combined_line_hides_the_token_in_the_referer_and_the_url() -> None:
    request = DummyRequest([b""])
    request.uri = b"/?%74oken=SEEKRIT"
    request.code, request.sentLength, request.clientproto = 200, 10, b"HTTP/1.1"
    request.requestHeaders.addRawHeader(b"referer", b"https://page.example/?a=1&token=SEEKRIT")
    line = combined_line("[01/Jan/2027:00:00:00 +0000]", request)
    assert "SEEKRIT" not in line
    assert "/?%74oken=***" in line and "https://page.example/?a=1&token=***" in line


# -- the per-address limit ----------------------------------------------------------

def limited(clock: Clock, burst: int = 3, max_keys: int = 100) -> tuple[PerAddress, list[str]]:
    lines: list[str] = []
    log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return PerAddress(log, clock, burst, interval=10.0, what="lines", max_keys=max_keys), lines


@pytest.mark.logic
def test_per_address_lets_a_burst_through_then_one_summary_with_counts_by_kind() -> None:
    clock = Clock()
    limit, summaries = limited(clock)
    allowed = [limit.allow("192.0.2.1", kind) for kind in ["200"] * 50 + ["404"] * 50]
    assert allowed.count(True) == 3 and limit.dropped == 97
    assert limit.allow("192.0.2.2", "200")  # another address has its own budget
    assert summaries == []
    clock.advance(10.0)
    assert summaries == ["97 lines about 192.0.2.1 not logged in the last 10 s "
                         "(at most 3 per address): 200: 47, 404: 50"]
    assert limit.allow("192.0.2.1", "200")  # a new interval, a new budget
    clock.advance(60.0)
    assert len(summaries) == 1  # nothing dropped since: no line, no timer left
    assert clock.getDelayedCalls() == []


@pytest.mark.logic
def test_per_address_bounds_the_addresses_it_keeps_too() -> None:
    clock = Clock()
    limit, summaries = limited(clock, burst=1, max_keys=10)
    allowed = [limit.allow(f"192.0.{n // 256}.{n % 256}", "200") for n in range(1000)]
    assert allowed.count(True) == 11  # ten addresses, then one budget for the rest
    clock.advance(10.0)
    assert summaries == [f"989 lines about {OTHERS} not logged in the last 10 s "
                         "(at most 1 per address): 200: 989"]


@pytest.mark.logic
def test_an_ipv6_client_is_its_slash_64() -> None:
    clock = Clock()
    limit, summaries = limited(clock, burst=2)
    allowed = [limit.allow(f"2001:db8:0:7::{n:x}", "200") for n in range(100)]
    assert allowed.count(True) == 2  # a new address of the same /64 is the same client
    assert limit.allow("2001:db8:0:8::1", "200")  # another /64 is another
    clock.advance(10.0)
    assert summaries == ["98 lines about 2001:db8:0:7::/64 not logged in the last 10 s "
                         "(at most 2 per address): 200: 98"]


@pytest.mark.logic
def test_a_connection_end_line_escapes_the_clients_close_reason() -> None:
    lines: list[str] = []
    access = AccessLog(Clock(), log=Logger(observer=lambda e: lines.append(formatEvent(e))))
    access.connection_ended("websocket", "192.0.2.1", b"/?token=SEEKRIT", 1.5, 10, 20, 4000,
                            'bye"\nforged line')
    assert lines == ['websocket "192.0.2.1" "GET /?token=***" ended after 1.500 s: sent 10 '
                     'bytes, received 20 bytes, close 4000 "bye\\"\\nforged line"']




@pytest.mark.logic
def test_the_daemon_tests_know_the_budgets() -> None:
    assert test_access_log_daemon.BURST == accesslog.BURST
    assert test_access_log_daemon.AUTOBAHN_BURST == protocol.AUTOBAHN_BURST
