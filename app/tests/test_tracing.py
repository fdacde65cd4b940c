"""W3C trace context in the app: a valid traceparent continues its trace (this request's span a
child of the sender's), a malformed or missing one starts a new trace, and every log line of
the request carries trace_id and span_id beside request_id. The worker side is in
test_worker.py."""

import json
import re

import pytest
from conftest import AUTH, free_port
from flaskfleet import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
HEX = re.compile(r"[0-9a-f]+")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (VALID, (TRACE_ID, PARENT_ID, "01")),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", (TRACE_ID, PARENT_ID, "00")),
        # A later version is read as far as version 00 goes.
        (f"cc-{TRACE_ID}-{PARENT_ID}-01-what-comes-next", (TRACE_ID, PARENT_ID, "01")),
        (f"cc-{TRACE_ID}-{PARENT_ID}-01", (TRACE_ID, PARENT_ID, "01")),
    ],
)
def test_valid_traceparent_parsed(header, expected):
    assert tracing.parse(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # uppercase hex
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has nothing after the flags
        f"cc-{TRACE_ID}-{PARENT_ID}-01x",
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        f"00_{TRACE_ID}_{PARENT_ID}_01",
        f" {VALID}",
        "not a traceparent",
    ],
)
def test_invalid_traceparent_refused(header):
    assert tracing.parse(header) is None


def test_child_keeps_the_trace_and_takes_a_new_span():
    child = tracing.continue_from(VALID)
    assert (child.trace_id, child.parent_span_id, child.flags) == (TRACE_ID, PARENT_ID, "01")
    assert child.span_id != PARENT_ID and len(child.span_id) == 16
    assert child.traceparent == f"00-{TRACE_ID}-{child.span_id}-01"
    assert tracing.parse(child.traceparent) == (TRACE_ID, child.span_id, "01")


def logged_lines(make_app, capfd, headers):
    """The app's log lines for one request that logs (its database is down), by request id."""
    app = make_app(FLASKFLEET_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    body = {"sku": "TRACED", "name": "n", "price_cents": 1, "stock": 1}
    response = app.test_client().post(
        "/api/v1/products", json=body, headers={**AUTH, "X-Request-ID": "req-trace", **headers}
    )
    assert response.status_code == 503
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    logged = [line for line in lines if line.get("request_id") == "req-trace"]
    assert logged, lines
    return logged


def assert_new_trace(logged, refused_trace_id=None):
    trace_ids = {line["trace_id"] for line in logged}
    assert len(trace_ids) == 1, logged
    (trace_id,) = trace_ids
    assert len(trace_id) == 32 and HEX.fullmatch(trace_id) and trace_id.strip("0"), trace_id
    assert trace_id != refused_trace_id
    for line in logged:
        assert len(line["span_id"]) == 16 and HEX.fullmatch(line["span_id"]), line
        assert "parent_span_id" not in line, line


def test_incoming_trace_is_on_every_log_line(make_app, capfd):
    logged = logged_lines(make_app, capfd, {"traceparent": VALID})
    for line in logged:
        assert line["trace_id"] == TRACE_ID, line
        assert line["parent_span_id"] == PARENT_ID, line
        assert len(line["span_id"]) == 16 and line["span_id"] != PARENT_ID, line
    assert len({line["span_id"] for line in logged}) == 1


@pytest.mark.parametrize(
    "header",
    [
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01; drop table",
    ],
    ids=["uppercase", "zero trace id", "trailing junk"],
)
def test_malformed_traceparent_replaced_by_a_new_trace(make_app, capfd, header):
    assert_new_trace(logged_lines(make_app, capfd, {"traceparent": header}), TRACE_ID)


def test_missing_traceparent_starts_a_trace(make_app, capfd):
    assert_new_trace(logged_lines(make_app, capfd, {}))
