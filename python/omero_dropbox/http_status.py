"""The status page and metrics served by ``omero-dropbox run --http HOST:PORT``.

Standard library only (``http.server``), in a daemon thread next to the engine:

* ``GET /``              per-user queues, recent imports (linked to OMERO.web with
                         ``--omero-web URL``), failures with reasons and a retry button;
* ``GET /metrics``       Prometheus text format (:mod:`omero_dropbox.metrics`);
* ``GET /status.json``   the ``omero-dropbox status --json`` document;
* ``GET /healthz``       ``ok`` while the service runs;
* ``POST /retry``        ``fileset=ID`` or ``all_failed=1``; needs the token.

Read-only unless the request carries the token kept in ``<state-dir>/http-token``
(a new one at every start, mode 0600): as the form field ``token`` or the header
``Authorization: Bearer TOKEN``.  The listener is loopback by default; bound to
loopback, requests naming another host (DNS rebinding) are refused.  Every value on
the page is escaped by :func:`omero_dropbox.text.printable` and then HTML-escaped (file names
are user-controlled).
"""

from __future__ import annotations

import contextlib
import hmac
import html
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omero_dropbox.config import ConfigError
from omero_dropbox.journal import FILESET_STATES, IMPORTED, Journal, JournalError, display_path
from omero_dropbox.metrics import CONTENT_TYPE, collect, exposition
from omero_dropbox.omero_objects import omero_web_link
from omero_dropbox.status import collect as collect_status
from omero_dropbox.status import one_line
from omero_dropbox.text import printable

if TYPE_CHECKING:
    from omero_dropbox.engine import DropBox

__all__ = ["TOKEN_FILE", "StatusServer", "parse_http_address", "write_token"]

log = logging.getLogger("omero_dropbox.http")

TOKEN_FILE = "http-token"
_MAX_BODY = 64 * 1024
#: Seconds a connection may stay silent (idle, or a request sent half) before it is closed.
CONNECTION_TIMEOUT = 5.0
#: Seconds a connection may last in all: a client trickling a byte every few seconds never
#: trips CONNECTION_TIMEOUT, so this cuts it (a page or a retry takes well under a second).
CONNECTION_DEADLINE = 20.0
#: Connections served at once; more are answered 503 and closed at once, never queued.
MAX_CONNECTIONS = 16
_BUSY_REPLY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nRetry-After: 5\r\nContent-Length: 46\r\n\r\n"
    b"too many connections to the status page; retry\n"
)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def parse_http_address(spec: str) -> tuple[str, int]:
    """``"8080"``, ``":8080"``, ``"127.0.0.1:8080"``, ``"[::1]:8080"`` -> (host, port).

    Without a host, loopback."""
    text = spec.strip()
    host = "127.0.0.1"
    port_text = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ConfigError(f"--http {spec!r}: write an IPv6 address as [ADDRESS]:PORT, e.g. [::1]:9810")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host or "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--http {spec!r}: the port must be a number from 0 to 65535 (0: any free port); "
            "write PORT or HOST:PORT, e.g. 127.0.0.1:9810"
        ) from None
    return host, port


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_token(state_dir: Path) -> Path:
    """A fresh random token in ``<state_dir>/http-token`` (0600, replaced atomically)."""
    path = Path(state_dir) / TOKEN_FILE
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    os.replace(tmp, path)
    return path


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` of them; each one silent for
    :data:`CONNECTION_TIMEOUT` s, or open for :data:`CONNECTION_DEADLINE` s in all, is closed
    (idle, half-sent or trickled requests hold no thread for ever)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: StatusServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._full_logged = False
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        deadline = threading.Timer(CONNECTION_DEADLINE, _cut, (request, client_address))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "Status page: %d connections at once (from %s and others); answering 503 to more "
                "until some close (idle ones are closed after %g s; logged once)",
                MAX_CONNECTIONS,
                client_address[0],
                CONNECTION_TIMEOUT,
            )
        with contextlib.suppress(OSError):
            request.setblocking(False)  # the accepting thread must never wait on a client
            request.send(_BUSY_REPLY)
        self.shutdown_request(request)


def _cut(request: socket.socket, client_address: Any) -> None:
    """End a connection past :data:`CONNECTION_DEADLINE`: its thread's read or write returns."""
    log.debug("%s: connection open for %g s; closing it", client_address[0], CONNECTION_DEADLINE)
    with contextlib.suppress(OSError):  # already closed: nothing to cut
        request.shutdown(socket.SHUT_RDWR)


class StatusServer:
    """Serves the status page for ``dropbox`` on ``host:port`` until :meth:`close`."""

    def __init__(
        self,
        dropbox: DropBox,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        omero_web: str | None = None,
        refresh: float = 10.0,
    ) -> None:
        self.dropbox = dropbox
        self.state_dir = Path(state_dir)
        self.omero_web = omero_web.rstrip("/") if omero_web else None
        self.refresh = refresh
        self.loopback = _is_loopback(host)
        self.token_path = write_token(self.state_dir).absolute()
        self._token = self.token_path.read_text(encoding="ascii").strip()
        # Its own read-only connection: page views never wait on the engine's journal lock.
        self.journal = Journal(self.state_dir, readonly=True, check=False)
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            self.journal.close()
            raise ConfigError(
                f"--http {host}:{port}: cannot listen there ({exc.strerror or exc}); "
                "choose another port, or free this one"
            ) from exc
        bound_host, bound_port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.url = f"http://{shown}:{bound_port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-status", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.dropbox.http_url = self.url
        log.info(
            "Status page on %s (metrics at %smetrics); read-only unless the token in %s is given",
            self.url,
            self.url,
            self.token_path,
        )
        if not self.loopback:
            log.warning(
                "The status page listens on %s, beyond this machine: anyone who can reach it "
                "sees file names and queues (retry still needs the token)",
                self.url,
            )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self.journal.close()

    # -- what the handler needs -------------------------------------------------------

    def token_ok(self, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self._token.encode())

    def status_doc(self, limit: int = 20) -> dict[str, Any]:
        live = {
            "running": True,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            **self.dropbox.runtime_status(),
        }
        live["started_at"] = self.dropbox.metrics.started
        live["updated_at"] = time.time()  # this document is made now, from the live service
        return collect_status(self.journal, self.state_dir, limit=limit, service=live)

    def metrics_text(self) -> str:
        live = self.dropbox.runtime_status()
        counts: dict[str, int] = {}
        for row in self.journal.counts("filesets").values():
            for state, n in row.items():
                counts[state] = counts.get(state, 0) + n
        return exposition(
            collect(
                self.dropbox.metrics,
                fileset_states=counts,
                all_states=FILESET_STATES,
                queue=live["queue"],
                waiting_files=sum(live["waiting"].values()),
                watcher=live["watcher"],
            )
        )

    def recent_imports(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` imports, newest first, by when they were imported: from the
        history, since a fileset's ``updated`` also moves when its files are renamed later."""
        recs = []
        seen: set[str] = set()
        for entry in self.journal.recent(limit * 4, IMPORTED):
            if entry.kind != "fileset" or entry.subject in seen:
                continue
            seen.add(entry.subject)
            rec = self.journal.fileset_by_id(entry.subject)
            if rec is not None and rec.state == IMPORTED:
                recs.append(rec)
            if len(recs) == limit:
                break
        objects = self.journal.objects_of(r.id for r in recs)
        out = []
        for r in recs:
            objs = objects.get(r.id, [])
            links = [(o, omero_web_link(self.omero_web, o) if self.omero_web else None) for o in objs]
            out.append(
                {
                    "fileset": r.id,
                    "user": r.user,
                    "key": display_path(r.key),
                    "files": len(r.members),
                    "format": r.format,
                    "at": r.finished or r.updated,
                    "objects": links,
                }
            )
        return out


# ------------------------------------------------------------------------ the page

_JS = """\
"use strict";
// The token is typed once and kept for this browser tab only (sessionStorage).
(function () {
  var field = document.getElementById("token");
  var forms = document.querySelectorAll("form.retry");
  function sync() {
    var t = field.value.trim();
    try { sessionStorage.setItem("omero-dropbox-token", t); } catch (e) {}
    forms.forEach(function (f) {
      f.querySelector("input[name=token]").value = t;
      f.querySelector("button").disabled = !t;
    });
  }
  try { field.value = sessionStorage.getItem("omero-dropbox-token") || ""; } catch (e) {}
  field.addEventListener("input", sync);
  sync();
  var every = Number(document.body.dataset.refresh || 0);
  if (every > 0) {
    setInterval(function () {
      if (document.activeElement !== field) { location.reload(); }
    }, every * 1000);
  }
})();
"""

_CSS = """\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}
td.n,th.n{text-align:right}.reason{white-space:pre-wrap;font-family:monospace;font-size:12px;max-width:60em}
.msg{background:#eef6ee;border:1px solid #9c9;padding:.5em}.err{background:#fbeeee;border-color:#c99}
.muted{color:#777}code{font-size:12px}
"""


def _e(value: object) -> str:
    """``value`` for HTML: escaped by :func:`printable` (controls, bidi), then HTML-escaped."""
    return html.escape(printable(str(value)), quote=True)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def render_page(
    app: StatusServer, message: str = "", error: bool = False, refresh: float | None = None
) -> str:
    doc = app.status_doc()
    imports = app.recent_imports()
    svc = doc["service"]
    queue = svc.get("queue", {})
    watcher = svc.get("watcher", {})
    refresh = app.refresh if refresh is None else refresh
    h: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>OMERO DropBox status</title>",
        f"<style>{_CSS}</style></head>",
        f'<body data-refresh="{_e(refresh)}">',
        f"<h1>OMERO DropBox on {_e(socket.gethostname())}</h1>",
        f"<p class=muted>Running since {_e(_when(svc.get('started_at')))}; page generated "
        f"{_e(_when(doc['generated_at']))}; journal "
        f"<code>{_e(Path(doc['state_dir']) / 'journal.sqlite3')}</code>."
        ' <a href="/metrics">metrics</a> · <a href="/status.json">status.json</a></p>',
    ]
    if message:
        h.append(f'<p id=message class="msg{" err" if error else ""}">{_e(message)}</p>')
    h.append(
        f"<p>Import queue: <b id=q-ready>{_e(queue.get('ready', 0))}</b> ready, "
        f"<b id=q-delayed>{_e(queue.get('delayed', 0))}</b> waiting to retry, "
        f"<b id=q-running>{_e(queue.get('running', 0))}</b> running. "
        f"Watcher: {_e(watcher.get('watches', 0))} directories, {_e(watcher.get('pending', 0))} files "
        f"being written, {_e(watcher.get('rescans', 0))} rescans, {_e(watcher.get('overflows', 0))} "
        "overflows.</p>"
    )
    h.append("<h2>Per user</h2>")
    heads = ("waiting", "queued", "importing", "imported today", "failed", "skipped files")
    keys = ("waiting", "queued", "importing", "imported_today", "failed", "skipped_files")
    h.append("<table id=users><tr><th>user</th>" + "".join(f"<th class=n>{x}</th>" for x in heads) + "</tr>")
    for user, row in doc["users"].items():
        cells = "".join(f'<td class=n data-col="{k}">{_e(row[k])}</td>' for k in keys)
        h.append(f'<tr data-user="{_e(user)}"><td>{_e(display_path(user) or "(none)")}</td>{cells}</tr>')
    if not doc["users"]:
        h.append("<tr><td colspan=7 class=muted>Nothing recorded yet.</td></tr>")
    h.append("</table>")

    h.append("<h2>Failures</h2>")
    h.append(
        "<p><label>Token (from <code>"
        f"{_e(app.token_path)}</code>) to enable retry: "
        "<input type=password id=token autocomplete=off size=44></label></p>"
    )
    if doc["failures"]:
        h.append(
            "<table id=failures><tr><th>when</th><th>user</th><th>file</th><th class=n>attempts</th>"
            "<th>reason</th><th></th></tr>"
        )
        for f in doc["failures"]:
            h.append(
                f'<tr data-fileset="{_e(f["fileset"])}"><td>{_e(_when(f["at"]))}</td><td>{_e(f["user"])}</td>'
                f"<td>{_e(f['key'])}<br><span class=muted>{_e(f['files'])} file(s), {_e(f['format'])}, "
                f"fileset {_e(f['fileset'][:12])}</span></td><td class=n>{_e(f['attempts'])}</td>"
                f"<td><div class=reason>{_e(f['reason'] or '(no reason recorded)')}</div></td>"
                '<td><form class=retry method=post action="/retry">'
                f'<input type=hidden name=fileset value="{_e(f["fileset"])}">'
                '<input type=hidden name=token value="">'
                "<button type=submit disabled>Retry</button></form></td></tr>"
            )
        h.append("</table>")
        h.append(
            '<form class=retry method=post action="/retry"><input type=hidden name=all_failed value=1>'
            '<input type=hidden name=token value="">'
            "<button type=submit disabled>Retry all failed</button></form>"
        )
    else:
        h.append("<p id=no-failures class=muted>No failed imports.</p>")

    h.append("<h2>Recent imports</h2>")
    if imports:
        h.append(
            "<table id=imports><tr><th>when</th><th>user</th><th>file</th><th>format</th><th>OMERO</th></tr>"
        )
        for i in imports:
            objs = []
            for obj, link in i["objects"]:
                objs.append(f'<a href="{_e(link)}">{_e(obj)}</a>' if link else _e(obj))
            h.append(
                f'<tr data-fileset="{_e(i["fileset"])}"><td>{_e(_when(i["at"]))}</td><td>{_e(i["user"])}</td>'
                f"<td>{_e(i['key'])}</td><td>{_e(i['format'])}</td>"
                f"<td>{', '.join(objs) or '<span class=muted>not reported</span>'}</td></tr>"
            )
        h.append("</table>")
    else:
        h.append("<p class=muted>No imports yet.</p>")
    h.append('<script src="/status.js"></script></body></html>')
    return "\n".join(h)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "omero-dropbox"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT  # socket timeout of each connection (StreamRequestHandler.setup)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    # -- helpers ------------------------------------------------------------------------

    def _send(
        self, status: int, body: str | bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'",
        )
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _host_ok(self) -> bool:
        """Bound to loopback, only loopback names are valid Host headers (DNS rebinding)."""
        if not self.server.app.loopback:
            return True
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            name = host[1 : host.find("]")] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return _is_loopback(name.lower())

    def _plain(self, status: int, text: str) -> None:
        self._send(status, printable(text) + "\n", "text/plain; charset=utf-8")

    # -- GET ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            self._plain(HTTPStatus.MISDIRECTED_REQUEST, "this status page only answers to localhost")
            return
        app = self.server.app
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            if url.path == "/":
                refresh = None
                if "refresh" in query:
                    with contextlib.suppress(ValueError):
                        refresh = max(0.0, float(query["refresh"][0]))
                msg = query.get("msg", [""])[0][:500]
                page = render_page(app, msg, error=query.get("error", ["0"])[0] == "1", refresh=refresh)
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif url.path == "/status.js":
                self._send(HTTPStatus.OK, _JS, "text/javascript; charset=utf-8")
            elif url.path == "/metrics":
                self._send(HTTPStatus.OK, app.metrics_text(), CONTENT_TYPE)
            elif url.path == "/status.json":
                self._send(HTTPStatus.OK, json.dumps(app.status_doc(), indent=2), "application/json")
            elif url.path == "/healthz":
                self._plain(HTTPStatus.OK, "ok")
            else:
                self._plain(HTTPStatus.NOT_FOUND, "not found; try / or /metrics")
        except (JournalError, OSError) as exc:
            log.error("Status page: %s", exc)
            self._plain(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot read the journal: {exc}")

    # -- POST ---------------------------------------------------------------------------

    def do_POST(self) -> None:
        if not self._host_ok():
            self._plain(HTTPStatus.MISDIRECTED_REQUEST, "this status page only answers to localhost")
            return
        app = self.server.app
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/retry":
            self._plain(HTTPStatus.NOT_FOUND, "not found; POST /retry")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._plain(HTTPStatus.BAD_REQUEST, f"the request body must be 0 to {_MAX_BODY} bytes")
            return
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        token = form.get("token", [""])[0].strip()
        auth = self.headers.get("Authorization") or ""
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        browser = "text/html" in (self.headers.get("Accept") or "")
        if not app.token_ok(token):
            log.warning("Status page: retry refused for %s: missing or wrong token", self.client_address[0])
            self._reply(
                browser,
                HTTPStatus.FORBIDDEN,
                f"Retry needs the token from {app.token_path} (it changes at every start of the service).",
                error=True,
            )
            return
        actor = f"the status page (client {self.client_address[0]})"
        try:
            if form.get("all_failed", [""])[0] == "1":
                ids = [r.id for r in app.journal.filesets("failed")]
                for fid in ids:
                    app.dropbox.retry(fid, actor)
                text = f"Re-queued {len(ids)} failed fileset(s)."
            else:
                ref = form.get("fileset", [""])[0]
                rec = app.journal.resolve_fileset(ref)
                app.dropbox.retry(rec.id, actor)
                text = f"Re-queued {display_path(rec.key)} (fileset {rec.id[:12]})."
        except JournalError as exc:
            self._reply(browser, HTTPStatus.CONFLICT, one_line(str(exc), 400), error=True)
            return
        self._reply(browser, HTTPStatus.OK, text)

    def _reply(self, browser: bool, status: int, text: str, error: bool = False) -> None:
        if browser:
            # Post/Redirect/Get: reloading the page does not post again.
            q = urllib.parse.urlencode({"msg": text, "error": "1" if error else "0", "refresh": "0"})
            self._send(HTTPStatus.SEE_OTHER, "", "text/plain", {"Location": f"/?{q}"})
        else:
            self._plain(status, text)
