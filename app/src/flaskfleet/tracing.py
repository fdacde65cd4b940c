"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` header, carried
from the load balancer through the app into the tasks a request causes.

    traceparent: 00-<trace id, 32 hex>-<parent id, 16 hex>-<flags, 2 hex>

The app and the worker only propagate it (no tracing backend): each log line carries the
trace id and the span id of the work it is part of. A request's span is a child of the span
that sent it (nginx's); a task's span is a child of the request's span; a task without a
valid traceparent (a periodic task, or one published before this release) starts a trace.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

HEADER = "traceparent"
VERSION = "00"
SAMPLED = "01"

# Lowercase hex only, as the specification requires; all-zero ids are invalid.
_FIELDS = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})"
)


@dataclass(frozen=True)
class TraceContext:
    """The span of the work at hand: its trace, its own id, its parent's id (None when it
    started the trace) and the trace flags."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    flags: str

    @property
    def traceparent(self) -> str:
        """The header to send with work caused by this span: this span is the parent."""
        return f"{VERSION}-{self.trace_id}-{self.span_id}-{self.flags}"

    def log_fields(self) -> dict[str, str]:
        fields = {"trace_id": self.trace_id, "span_id": self.span_id}
        if self.parent_span_id:
            fields["parent_span_id"] = self.parent_span_id
        return fields


def _new_id(hex_digits: int) -> str:
    while True:
        value = secrets.token_hex(hex_digits // 2)
        if value.strip("0"):
            return value


def parse(header: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid traceparent, else None.

    Version 00 is exactly 55 characters. A later version (not ff) is read as far as version
    00 goes, provided what follows starts with "-", as the specification asks of a receiver.
    """
    if not header:
        return None
    match = _FIELDS.match(header)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.group("version", "trace_id", "parent_id", "flags")
    rest = header[match.end() :]
    if version == "ff" or (version == VERSION and rest) or (rest and not rest.startswith("-")):
        return None
    if not trace_id.strip("0") or not parent_id.strip("0"):
        return None
    return trace_id, parent_id, flags


def start() -> TraceContext:
    """A new trace, this span its root, sampled."""
    return TraceContext(_new_id(32), _new_id(16), None, SAMPLED)


def continue_from(header: str | None) -> TraceContext:
    """A child span of the span that sent `header`; a new trace if it is missing or invalid."""
    parsed = parse(header)
    if parsed is None:
        return start()
    trace_id, parent_id, flags = parsed
    return TraceContext(trace_id, _new_id(16), parent_id, flags)
