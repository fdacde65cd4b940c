"""JSON log lines, each carrying the id of the request that caused it and the W3C trace
context (trace_id, span_id, parent_span_id; flaskfleet.tracing): in the app the request being
served, in a worker the task, whose span is a child of the request's (set by flaskfleet.worker)."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

from flask import g, has_request_context

# Attributes every LogRecord has; anything else was passed with extra= and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)

# Fields of the task a worker process is running (task, task_id, request_id, trace_id, span_id,
# parent_span_id), if any.
task_fields: ContextVar[dict[str, Any] | None] = ContextVar("flaskfleet_task_fields", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, trace context,
    authenticated client and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context():
            if "request_id" in g:
                entry["request_id"] = g.request_id
            if "trace" in g:
                entry.update(g.trace.log_fields())
            if g.get("client") is not None:
                entry["client"] = g.client.name
        entry.update(task_fields.get() or {})
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record, not at set-up time."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        """Ignored: the stream is always the current sys.stderr."""


def configure(name: str = "flaskfleet") -> None:
    """Send the logger `name` (flaskfleet's own, or "" for every logger: a worker's Celery
    lines too) to stderr as JSON, at INFO (once per process)."""
    logger = logging.getLogger(name)
    if any(isinstance(handler.formatter, JsonFormatter) for handler in logger.handlers):
        return
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
