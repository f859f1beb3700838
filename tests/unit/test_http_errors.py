"""Typed errors become their HTTP answers; only unknown ones are logged with a traceback."""

from __future__ import annotations

import json
import logging

import pytest
from starlette.requests import Request

from sockudo.errors import AppendOutcomeUnknown, Backpressure, FoldTimeout, LogUnavailable
from sockudo.http.errors import handle_exception


def request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/apps/1/events", "headers": []})


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (LogUnavailable("broker down"), 503, "service_unavailable"),
        (AppendOutcomeUnknown("not acknowledged in time"), 504, "publish_outcome_unknown"),
        (Backpressure("behind"), 503, "backpressure"),
        (FoldTimeout("slow"), 504, "fold_timeout"),
    ],
)
async def test_operational_errors_are_one_warning_line(
    exc: Exception, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sockudo.http.errors"):
        response = await handle_exception(request(), exc)
    assert response.status_code == status
    assert json.loads(bytes(response.body))["code"] == code
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.getMessage() == f"POST /apps/1/events answered {code}: {exc}"


async def test_an_unknown_error_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sockudo.http.errors"):
        response = await handle_exception(request(), KeyError("boom"))
    assert response.status_code == 500
    assert json.loads(bytes(response.body))["code"] == "internal_error"
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
