"""Every JSON answer of the HTTP resources is written one way (partysense/web/jsonanswer.py)."""

from __future__ import annotations

import json

import pytest
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from partysense.web.jsonanswer import LaterAnswer, json_body, write_json

pytestmark = pytest.mark.logic


def test_an_answer_has_its_status_json_no_store_and_a_retry_after_when_asked() -> None:
    request = DummyRequest([b""])
    write_json(request, 429, {"error": "too_many_requests"}, retry_after=5)
    assert request.responseCode == 429
    assert request.responseMessage == b"Too Many Requests"  # Twisted knows no phrase for 429
    headers = request.responseHeaders
    assert headers.getRawHeaders("content-type") == ["application/json"]
    assert headers.getRawHeaders("cache-control") == ["no-store"]
    assert headers.getRawHeaders("retry-after") == ["5"]
    assert json.loads(b"".join(request.written)) == {"error": "too_many_requests"}
    assert request.finished


def test_without_retry_after_there_is_no_such_header_and_the_body_is_one_line() -> None:
    request = DummyRequest([b""])
    body = json_body(request, 200, {"status": "ok"})
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert not request.responseHeaders.hasHeader("retry-after")


def test_a_later_answer_is_not_written_to_a_client_that_has_gone() -> None:
    request = DummyRequest([b""])
    answer = LaterAnswer(request)
    request.processingFailed(Failure(ConnectionError("gone")))  # the client went away
    answer(200, [])
    assert request.written == [] and request.responseCode != 200
