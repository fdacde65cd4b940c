"""The bare-Gunicorn ceiling: a WSGI callable answering a constant response.

No framework, no I/O: what one Gunicorn worker serves at best on this machine.
"""

BODY = b'{"status":"ok"}\n'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
