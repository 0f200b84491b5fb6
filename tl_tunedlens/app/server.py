"""The explorer's local web server: one page, its static assets and two JSON/HTML endpoints (werkzeug).

Routes: ``GET /`` the page; ``GET /static/<name>`` its script, style sheet and plotly.js (from the
installed ``plotly`` package, its one CDN URL neutralised); ``GET /api/settings`` the model, lenses,
statistics and limits; ``POST /api/analyze`` a :class:`~tl_tunedlens.app.query.Query` as JSON, answered with the
figures and table as JSON; ``POST /api/stream`` the same query answered progressively, row block by row
block, as newline-delimited JSON (what the page uses; :mod:`.progressive`); ``POST /api/report`` the offline page ``tl-tunedlens show`` writes, as an
attachment. Bad input is answered ``400 {"error": "<one line>"}``, which the page shows.

Offline by construction: the page and its assets come from this server only, and every response
carries a Content-Security-Policy allowing scripts, styles, images and connections from this
origin alone (plus inline styles and ``data:``/``blob:`` images, which plotly draws with), so the
browser refuses any other address; there is no analytics or telemetry code. The server binds to
127.0.0.1 by default and, on a loopback address, answers only requests whose ``Host`` is a loopback
name (a DNS-rebinding guard).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import sys
import threading
import traceback
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from ..errors import LensError, first_line
from .explorer import Explorer, Query
from .progressive import Progressive

try:
    from werkzeug.exceptions import HTTPException, NotFound
    from werkzeug.routing import Map, Rule
    from werkzeug.serving import WSGIRequestHandler, make_server
    from werkzeug.wrappers import Request, Response
except ImportError:  # pragma: no cover - exercised only without the [app] extra
    raise LensError("the explorer needs werkzeug: pip install 'tl-tunedlens[app]'") from None

MAX_BODY_BYTES = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@functools.lru_cache(maxsize=None)
def static_file(name: str) -> bytes:
    """A file of the page (``index.html``, ``explorer.js``, ``explorer.css``), or plotly.js."""
    if name == "plotly.min.js":
        from plotly.offline import get_plotlyjs

        from ..viz.plots import offline_html

        return offline_html(get_plotlyjs()).encode()
    path = resources.files(__package__).joinpath("static", name)
    if "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound()
    return path.read_bytes()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, IPv6 in brackets allowed) is this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ExplorerApp:
    """The WSGI application of an :class:`~tl_tunedlens.app.explorer.Explorer`. ``check_host``: answer only loopback ``Host`` names."""

    def __init__(self, explorer: Explorer, *, check_host: bool = True, log: Callable[[str], None] | None = None):
        self.explorer, self.check_host = explorer, check_host
        self.log = log or (lambda text: print(text, file=sys.stderr))
        self.progressive = Progressive(explorer, self.log)
        self.urls = Map([
            Rule("/", endpoint="index", methods=["GET"]),
            Rule("/static/<name>", endpoint="static", methods=["GET"]),
            Rule("/api/settings", endpoint="settings", methods=["GET"]),
            Rule("/api/analyze", endpoint="analyze", methods=["POST"]),
            Rule("/api/stream", endpoint="stream", methods=["POST"]),
            Rule("/api/report", endpoint="report", methods=["POST"]),
        ])

    # --- endpoints ------------------------------------------------------------------------
    def on_index(self, request: Request) -> Response:
        """``GET /``: the page."""
        return Response(static_file("index.html"), mimetype="text/html")

    def on_static(self, request: Request, name: str) -> Response:
        """``GET /static/<name>``: the page's script, style sheet and plotly.js, from the installed packages."""
        suffix = "." + name.rsplit(".", 1)[-1]
        response = Response(static_file(name), mimetype=STATIC_TYPES.get(suffix, "application/octet-stream"))
        response.cache_control.max_age = 3600 if name == "plotly.min.js" else 0
        return response

    def on_settings(self, request: Request) -> Response:
        """``GET /api/settings``: the lenses, statistics and limits, as JSON."""
        return _json(self.explorer.settings())

    def on_analyze(self, request: Request) -> Response:
        """``POST /api/analyze``: figures and tables for a query, as JSON."""
        return _json(self.explorer.respond(self._query(request)))

    def on_stream(self, request: Request) -> Response:
        """``POST /api/stream``: the same, progressively, as newline-delimited JSON (:mod:`.progressive`)."""
        lines = self.progressive.answer(self._json_body(request))
        return Response(lines, mimetype="application/x-ndjson", direct_passthrough=True)

    def on_report(self, request: Request) -> Response:
        """``POST /api/report``: the offline page ``tl-tunedlens show`` writes, as a download."""
        page = self.explorer.report(self._query(request))
        response = Response(page, mimetype="text/html")
        response.headers["Content-Disposition"] = 'attachment; filename="tl_tunedlens-report.html"'
        return response

    def _json_body(self, request: Request) -> Any:
        if request.mimetype != "application/json":
            raise LensError("send the query as JSON (Content-Type: application/json)")
        data = request.get_json(silent=True)
        if data is None:
            raise LensError("the request body is not valid JSON")
        return data

    def _query(self, request: Request) -> Query:
        return Query.from_json(self._json_body(request), self.explorer.limits)

    # --- WSGI -----------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        """Route ``request``; bad input becomes a 400 with a one-line message, never a crash."""
        request.max_content_length = MAX_BODY_BYTES
        try:
            if self.check_host and not is_loopback(urlsplit("//" + request.host).hostname or ""):
                return _json({"error": f"host {request.host!r} refused: open the explorer at "
                                       f"http://127.0.0.1:{request.environ.get('SERVER_PORT', 'PORT')}/"}, 403)
            endpoint, args = self.urls.bind_to_environ(request.environ).match()
            return getattr(self, f"on_{endpoint}")(request, **args)
        except LensError as err:
            return _json({"error": str(err)}, 400)
        except HTTPException as err:
            if request.path.startswith("/api/"):
                return _json({"error": f"{err.code} {err.name}: {first_line(err.description or '')}"}, err.code or 500)
            return err.get_response(request.environ)
        except Exception as err:  # a bug: keep serving, tell the page, log the traceback
            self.log(traceback.format_exc())
            return _json({"error": f"internal error ({type(err).__name__}: {first_line(err)}); see the server's log"}, 500)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response(environ, start_response)


def _json(data: Any, status: int = 200) -> Response:
    from plotly.io.json import to_json_plotly  # encodes figures, numpy and NaN (as null)

    return Response(to_json_plotly(data), status=status, mimetype="application/json")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class Server:
    """The explorer served over HTTP on ``host:port`` (``port=0``: any free port), threaded.

    ``serve_forever()`` blocks (``tl-tunedlens serve``); ``start()`` serves from a daemon thread and
    ``stop()`` ends it (tests); also a context manager."""

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, *, quiet: bool = False):
        app = ExplorerApp(explorer, check_host=is_loopback(host))
        handler = _QuietHandler if quiet else WSGIRequestHandler
        try:
            self.httpd = make_server(host, port, app, threaded=True, request_handler=handler)
        except OSError as err:
            raise LensError(f"cannot listen on {host}:{port} ({first_line(err)}): pass another --port "
                            "(or --port 0 for any free one) or --host") from None
        self.host, self.port = host, self.httpd.server_port
        self.thread: threading.Thread | None = None

    @staticmethod
    def check_address(host: str, port: int) -> int:
        """``port`` if ``host:port`` can be listened on now (checked before a slow model load); else a one-line error."""
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as err:
            raise LensError(f"cannot listen on {host}:{port} ({first_line(err)}): pass another --port "
                            "(or --port 0 for any free one) or --host") from None
        return port

    @property
    def url(self) -> str:
        """The address to open in a browser."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self.httpd.serve_forever()

    def start(self) -> "Server":
        """Serve in a background thread; returns ``self``."""
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="tl-tunedlens-serve", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and close its socket."""
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join(timeout=10)
            self.thread = None
        self.httpd.server_close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
