"""The rating web server: one static page, a small JSON API, and the study's videos by opaque id.

Why the standard library's ThreadingHTTPServer: a study has a handful of raters on one machine or
a lab network; the server needs four routes, a body limit and range requests for video, which
http.server gives with no dependency to install, pin or audit (an ASGI stack would add three
packages and an event loop to the trainer's environment for no gain at this scale). Each request
runs in its own thread with its own SQLite connection; the database serialises the writes.

Blindness: the page and every response name items by per-rater assignment ids only (random,
unguessable). Videos are served as ``/media/<assignment id>/<left|right>``: the server looks the
file up in the manifest, so no client-supplied path reaches the file system, and the same file
has a different URL in every assignment (the URL cannot link a video to a system across items).
Model names, run names, eval dirs and file names never leave the server.

Sharing: off-loopback binding (``host=0.0.0.0``) needs a token, then every request must carry it
(``?token=`` on the first page load, which sets a cookie; the page's API calls send a header).
On loopback without a token, the Host header must name the loopback address, so a web page the
rater visits elsewhere cannot reach the study through DNS rebinding.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import re
import signal
import sys
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .store import Refused, Store

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).with_name("page")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_BODY = 8 * 1024  # an answer is a few hundred bytes; anything larger is refused unread
MAX_TARGET = 2048  # request line: the longest legitimate URL is a media URL with a token
MEDIA = re.compile(r"^/media/([A-Za-z0-9_-]{8,32})/(left|right)$")
TOKEN_COOKIE = "study_token"
TOKEN_HEADER = "X-Study-Token"
RATER_HEADER = "X-Rater-Key"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store", "X-Frame-Options": "DENY",
                    "Content-Security-Policy": "default-src 'self'; media-src 'self'; img-src 'self' data:; "
                                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"}


class ServerRefused(ValueError):
    """A server setting that would expose the study (the message says what to set)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RatingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a stalled browser connection must not keep the process alive on shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: Store, token: str | None):
        host = address[0]
        if not is_loopback(host) and not token:
            raise ServerRefused(f"host={host} serves the study beyond this machine: set token=<secret> "
                                "(or token=auto) so every request must carry it, or keep host=127.0.0.1")
        self.store, self.token = store, token
        self.media = {m["id"]: m for m in store.manifest["media"]}
        self.pages = {route: (PAGE_DIR / name).read_bytes() for route, (name, _) in STATIC.items()}
        super().__init__(address, Handler)
        port = self.server_address[1]
        self.allowed_hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {
            f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"}

    def url(self, public_host: str | None = None) -> str:
        host = public_host or self.server_address[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.server_address[1]}/{query}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: RatingServer
    server_version = "rating"
    timeout = 30  # a client that stops sending mid-request frees its thread
    protocol_version = "HTTP/1.1"

    # -- plumbing ----------------------------------------------------------------------------------
    def version_string(self) -> str:
        return self.server_version  # no Python version or platform in the Server header

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, value: Any, extra: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(value).encode(), "application/json", extra)

    def fail(self, status: int, message: str) -> None:
        # Error bodies are fixed phrases: never a path, a name or the request echoed back.
        self.close_connection = True
        self.send_json(status, {"error": message})

    def parsed(self) -> tuple[str, dict[str, list[str]]] | None:
        parts = urlsplit(self.path)
        try:
            return parts.path, parse_qs(parts.query, max_num_fields=8)
        except ValueError:  # more query fields than any page URL has
            return None

    def authorised(self, query: dict[str, list[str]]) -> bool:
        """With a token: it came in the query, the header or the cookie. Without: the Host header
        names this loopback server."""
        if not self.server.token:
            return self.headers.get("Host", "") in self.server.allowed_hosts
        offered = [*query.get("token", [])[:1], self.headers.get(TOKEN_HEADER, ""), self.cookie(TOKEN_COOKIE)]
        expected = self.server.token.encode()
        return any(value and hmac.compare_digest(value.encode(), expected) for value in offered)

    def cookie(self, name: str) -> str:
        for part in self.headers.get("Cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return ""

    def guard(self) -> tuple[str, dict[str, list[str]]] | None:
        if len(self.path) > MAX_TARGET:
            self.fail(HTTPStatus.REQUEST_URI_TOO_LONG, "request too long")
            return None
        parsed = self.parsed()
        if parsed is None:
            self.fail(HTTPStatus.BAD_REQUEST, "bad request")
            return None
        path, query = parsed
        if not self.authorised(query):
            self.fail(HTTPStatus.UNAUTHORIZED if self.server.token else HTTPStatus.FORBIDDEN, "not allowed")
            return None
        return path, query

    def rater(self) -> dict[str, Any] | None:
        return self.server.store.rater_by_key(self.headers.get(RATER_HEADER))

    def body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if int(length) > MAX_BODY:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise Refused(HTTPStatus.BAD_REQUEST, "expected JSON") from None

    # -- routes ------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        self.guarded(self.get)

    def do_POST(self) -> None:  # noqa: N802
        self.guarded(self.post)

    def guarded(self, route) -> None:
        """Any unexpected failure is a bare 500: no traceback, path or value reaches the client."""
        try:
            route()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - logged here, the client gets a fixed phrase
            log.exception("request %s failed", self.command)
            try:
                self.fail(HTTPStatus.INTERNAL_SERVER_ERROR, "server error")
            except OSError:
                self.close_connection = True

    def get(self) -> None:
        checked = self.guard()
        if checked is None:
            return
        path, query = checked
        if path in STATIC:
            extra = {}
            if self.server.token and query.get("token"):
                extra["Set-Cookie"] = f"{TOKEN_COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
            self.send(HTTPStatus.OK, self.server.pages[path], STATIC[path][1], extra)
        elif path == "/api/next":
            self.next_item()
        elif (match := MEDIA.match(path)) is not None:
            self.media(match.group(1), match.group(2))
        else:
            self.fail(HTTPStatus.NOT_FOUND, "not found")

    def post(self) -> None:
        checked = self.guard()
        if checked is None:
            return
        path, _ = checked
        try:
            if path == "/api/rater":
                payload = self.body()
                rater = self.server.store.rater(payload.get("name") if isinstance(payload, dict) else None)
                done, total = self.server.store.progress(rater["id"])
                self.send_json(HTTPStatus.OK, {"key": rater["key"], "name": rater["name"], "answered": done,
                                               "total": total})
            elif path == "/api/answer":
                rater = self.rater()
                if rater is None:
                    raise Refused(HTTPStatus.UNAUTHORIZED, "unknown rater: enter your name again")
                payload = self.body()
                self.send_json(HTTPStatus.OK, self.server.store.answer(rater, payload))
            else:
                self.fail(HTTPStatus.NOT_FOUND, "not found")
        except Refused as refused:
            self.fail(refused.status, str(refused))

    def do_PUT(self) -> None:  # noqa: N802
        self.fail(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def next_item(self) -> None:
        rater = self.rater()
        if rater is None:
            self.fail(HTTPStatus.UNAUTHORIZED, "unknown rater: enter your name again")
            return
        store = self.server.store
        done, total = store.progress(rater["id"])
        assignment = store.next_assignment(rater["id"])
        settings = store.settings
        common = {"name": rater["name"], "answered": done, "total": total, "mode": settings["mode"],
                  "questions": settings["questions"]}
        if assignment is None:
            self.send_json(HTTPStatus.OK, {**common, "done": True})
            return
        item = store.items[assignment["item_id"]]
        self.send_json(HTTPStatus.OK, {**common, "done": False, "assignment": assignment["id"],
                                       "prompt": item["prompt"],
                                       "videos": {side: f"/media/{assignment['id']}/{side}" for side in ("left", "right")}})

    def media(self, assignment_id: str, side: str) -> None:
        store = self.server.store
        assignment = store.assignment(assignment_id)
        if assignment is None:
            self.fail(HTTPStatus.NOT_FOUND, "not found")
            return
        entry = self.server.media[store.media_for(assignment, side)]
        try:
            data = Path(entry["path"]).read_bytes()
        except OSError:
            log.error("study video %s is unreadable", entry["path"])
            self.fail(HTTPStatus.INTERNAL_SERVER_ERROR, "video unavailable")
            return
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if wanted and (wanted.group(1) or wanted.group(2)):
            # One byte range (what a video element asks for when it seeks); several ranges are not needed.
            start, end = wanted.group(1), wanted.group(2)
            if start:
                first, last = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
            else:
                first, last = max(0, len(data) - int(end)), len(data) - 1
            if first > last or first >= len(data):
                self.send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", entry["type"],
                          {**headers, "Content-Range": f"bytes */{len(data)}"})
                return
            self.send(HTTPStatus.PARTIAL_CONTENT, data[first:last + 1], entry["type"],
                      {**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"})
            return
        self.send(HTTPStatus.OK, data, entry["type"], headers)


def serve(store: Store, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          ready: threading.Event | None = None, out=None) -> None:
    """Serve until interrupted; prints the URL (with the token, when one is set) first."""
    server = RatingServer((host, port), store, token)
    out = out or sys.stdout
    items = sum(1 for i in store.manifest["items"] if i["kind"] == "pair")
    print(f"Rating study: {items} items in {len(store.manifest['comparisons'])} comparison(s), "
          f"{store.settings['mode']} mode. Open {server.url()}  (Ctrl-C stops; ratings are saved as they come)",
          file=out, flush=True)
    if ready is not None:
        ready.set()
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) stops as Ctrl-C does: every accepted answer is already committed, so this
        # only closes the socket cleanly and says so.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("stopped", file=out, flush=True)
    finally:
        server.server_close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
