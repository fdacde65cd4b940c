"""Request plumbing shared by the blueprints: ids, headers, metrics, auth, bodies, consistency."""

from __future__ import annotations

import functools
import hmac
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from flaskfleet import metrics
from flaskfleet.db import LSN_PATTERN
from flaskfleet.errors import APIError, validation_error

ModelT = TypeVar("ModelT", bound=BaseModel)

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Holds the primary's WAL position after this client's last write (see db.Database.read).
WRITE_LSN_COOKIE = "flaskfleet_write_lsn"
HOSTNAME = socket.gethostname()


def register(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Served-By"] = HOSTNAME
        response.headers["X-App-Version"] = current_app.extensions["flaskfleet"].settings.release
        # Unmatched URLs share one label so that scanners cannot explode metric cardinality.
        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        status = str(response.status_code)
        metrics.HTTP_REQUESTS.labels(request.method, route, status).inc()
        if response.status_code >= 500:
            metrics.HTTP_ERRORS.labels(request.method, route, status).inc()
        if "started" in g:
            metrics.HTTP_DURATION.labels(request.method, route).observe(
                time.perf_counter() - g.started
            )
        return response


def require_token(view: Callable) -> Callable:
    """Writes need `Authorization: Bearer <token>` with a configured token."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any):
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        tokens = current_app.extensions["flaskfleet"].settings.api_tokens
        presented_bytes = presented.strip().encode()
        # Compare against every token, in constant time, so timing reveals nothing.
        matched = False
        for token in tokens:
            matched |= hmac.compare_digest(presented_bytes, token.get_secret_value().encode())
        if scheme.lower() != "bearer" or not presented_bytes or not matched:
            raise APIError(
                401,
                "unauthorized",
                "a valid bearer token is required for writes",
                headers={"WWW-Authenticate": 'Bearer realm="flaskfleet"'},
            )
        return view(*args, **kwargs)

    return wrapper


def parse_body(model: type[ModelT]) -> ModelT:
    """Validate a JSON request body: 415 wrong type, 413 too big, 400 unreadable, 422 invalid."""
    if request.mimetype != "application/json":
        raise APIError(415, "unsupported_media_type", "the body must be application/json")
    raw = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400, "invalid_encoding", f"the body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise APIError(400, "malformed_json", "the body is not valid JSON") from None
        raise validation_error(exc) from None


def query_int(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise APIError(
            400,
            "invalid_query",
            f"{name} must be an integer from {minimum} to {maximum}",
            {name: f"must be an integer from {minimum} to {maximum}"},
        )
    return int(raw)


def client_write_lsn() -> str | None:
    """The WAL position of this client's last write, while it is within the window.

    The cookie holds "<lsn>@<unix time of the write>": the server enforces the window itself
    rather than trusting the client to drop the cookie. A forged value can only make this
    client's own reads go to the primary.
    """
    lsn, _, written_at = request.cookies.get(WRITE_LSN_COOKIE, "").partition("@")
    if not LSN_PATTERN.match(lsn) or not written_at.isdigit():
        return None
    window = current_app.extensions["flaskfleet"].settings.read_your_writes_seconds
    return lsn if time.time() - int(written_at) < window else None


def remember_write(response: Response, lsn: str) -> Response:
    """Let this client's next reads wait for (or bypass) a replica that has not caught up."""
    window = current_app.extensions["flaskfleet"].settings.read_your_writes_seconds
    if window:
        response.set_cookie(
            WRITE_LSN_COOKIE,
            f"{lsn}@{int(time.time())}",
            max_age=window,
            httponly=True,
            samesite="Lax",
            path="/",
        )
    return response


def json_response(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def conditional_json(body: Any, cache_state: str, source: str | None) -> Response:
    """A JSON GET response with a strong ETag, answering 304 when If-None-Match matches."""
    response = jsonify(body)
    response.headers["X-Cache"] = cache_state
    if source:
        response.headers["X-Read-Source"] = source
    response.add_etag()
    return response.make_conditional(request)
