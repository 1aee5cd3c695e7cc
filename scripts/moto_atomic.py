"""moto's S3 server, with its conditional writes made atomic.

moto checks `If-None-Match: *` / `If-Match` and then writes, in two steps that another
request thread can run between: under load two writers can both "create if absent"
(seen as two lease holders or two winners in weir's race tests). Real S3 is atomic, and
the tests exist to check weir against that promise, so here every mutating request runs
one at a time (reads stay concurrent). Loopback only.

    python3 scripts/moto_atomic.py PORT
"""

import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

_writes = threading.Lock()
_app = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
        return _app(environ, start_response)
    with _writes:
        # The response may be produced lazily: finish it inside the lock.
        result = _app(environ, start_response)
        try:
            return [b"".join(result)]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
