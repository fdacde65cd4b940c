"""Gunicorn logger class writing the error log and the access log as JSON lines."""

from __future__ import annotations

import logging

from gunicorn import glogging

from flaskfleet.logs import JsonFormatter


class JsonGunicornLogger(glogging.Logger):
    """Named in gunicorn.conf.py as logger_class; access_log_format is not used."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        pairs = resp.headers.items() if hasattr(resp.headers, "items") else resp.headers
        headers = {name.lower(): value for name, value in pairs}
        self.access_log.log(
            logging.INFO,
            "request",
            extra={
                "remote_addr": environ.get("REMOTE_ADDR"),
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "query": environ.get("QUERY_STRING") or None,
                "status": int(status),
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "user_agent": environ.get("HTTP_USER_AGENT"),
                "request_id": headers.get("x-request-id"),
            },
        )
