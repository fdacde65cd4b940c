"""Request plumbing shared by the blueprints: ids, headers, metrics, auth, bodies, consistency."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, jsonify, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, ValidationError

from flaskfleet import metrics, tracing
from flaskfleet.config import ApiClient, Scope
from flaskfleet.db import LSN_PATTERN
from flaskfleet.errors import APIError, validation_error

ModelT = TypeVar("ModelT", bound=BaseModel)

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Holds the primary's WAL position after this client's last write (see db.Database.read).
WRITE_LSN_COOKIE = "flaskfleet_write_lsn"
# Signs only that cookie: a value signed for another purpose with the same key does not verify.
WRITE_LSN_SALT = "flaskfleet.read-your-writes"
# The WSGI environ key under which the authenticated client's name reaches Gunicorn's access
# log (gunicorn.conf.py), which sees the environ but not Flask's g.
CLIENT_ENVIRON_KEY = "flaskfleet.client"
# Likewise this request's span (flaskfleet.tracing), so the access line carries the trace.
TRACE_ENVIRON_KEY = "flaskfleet.trace"
HOSTNAME = socket.gethostname()


def register(app: Flask) -> None:
    """Request hooks; registered before the rate limiter's, which needs g.client."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        # This request's span, a child of the sender's (nginx's); a missing or malformed
        # traceparent starts a new trace rather than being passed on.
        g.trace = tracing.continue_from(request.headers.get(tracing.HEADER))
        request.environ[TRACE_ENVIRON_KEY] = g.trace.log_fields()
        g.started = time.perf_counter()

    @app.before_request
    def _authenticate() -> None:
        g.client = authenticate()
        if g.client is not None:
            request.environ[CLIENT_ENVIRON_KEY] = g.client.name

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


def _challenge(error: str | None = None, scope: str | None = None) -> dict[str, str]:
    """The RFC 6750 WWW-Authenticate header."""
    challenge = 'Bearer realm="flaskfleet"'
    if error:
        challenge += f', error="{error}"'
    if scope:
        challenge += f', scope="{scope}"'
    return {"WWW-Authenticate": challenge}


def _unauthorized(message: str, error: str | None = None) -> APIError:
    return APIError(401, "unauthorized", message, headers=_challenge(error))


def authenticate() -> ApiClient | None:
    """The client whose bearer token the request carries, or None without an Authorization header.

    A header that is present but does not name a configured client is refused (401) on every
    route, reads included: such a request must not pass as anonymous.
    """
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise _unauthorized("the Authorization header must be 'Bearer <token>'", "invalid_request")
    digest = hashlib.sha256(presented.encode()).hexdigest().encode()
    # Compare with every client, in constant time, so that timing reveals nothing.
    found = None
    for client in current_app.extensions["flaskfleet"].settings.api_clients:
        if hmac.compare_digest(digest, client.token_sha256.encode()):
            found = client
    if found is None:
        raise _unauthorized("the bearer token is not valid", "invalid_token")
    return found


def require_scope(scope: Scope) -> Callable[[Callable], Callable]:
    """The view needs an authenticated client holding `scope`: else 401 (no token) or 403."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any):
            client: ApiClient | None = g.client
            if client is None:
                raise _unauthorized(f"a bearer token with the scope {scope} is required")
            if scope not in client.scopes:
                raise APIError(
                    403,
                    "forbidden",
                    f"client {client.name} lacks the scope {scope}",
                    headers=_challenge("insufficient_scope", scope),
                )
            return view(*args, **kwargs)

        return wrapper

    return decorate


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


def _write_lsn_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=WRITE_LSN_SALT)


def client_write_lsn() -> str | None:
    """The WAL position of this client's last write, while it is within the window.

    The cookie is signed with the secret key and carries its signing time: the server enforces
    the window itself rather than trusting the client to drop the cookie. A forged, tampered,
    expired or future-dated cookie is ignored, so nobody can send their reads past the cache to
    the primary at will.
    """
    window = current_app.extensions["flaskfleet"].settings.read_your_writes_window
    cookie = request.cookies.get(WRITE_LSN_COOKIE)
    if not window or not cookie:
        return None
    try:
        lsn = _write_lsn_serializer().loads(cookie, max_age=window)
    except BadSignature:  # SignatureExpired (too old or from the future) included
        return None
    return lsn if isinstance(lsn, str) and LSN_PATTERN.match(lsn) else None


def remember_write(response: Response, lsn: str) -> Response:
    """Let this client's next reads wait for (or bypass) a replica that has not caught up."""
    window = current_app.extensions["flaskfleet"].settings.read_your_writes_window
    if window:
        response.set_cookie(
            WRITE_LSN_COOKIE,
            _write_lsn_serializer().dumps(lsn),
            max_age=window,
            secure=request.is_secure,
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
