"""The reading server: one address for every reader of a study (`llnassist study serve STUDY`).

Readers sign in with the personal one-time link a coordinator issues (`llnassist study invite`);
the link becomes an HttpOnly, SameSite=Strict sign-in cookie. For each signed-in reader the server
starts that reader's station (`webreader.py`, a trame-slicer process on 127.0.0.1 with a random
wslink key) and relays the page and its websocket to it. So:
- the reader is fixed by the sign-in on the server; nothing the page sends can name another one;
- the websocket needs the sign-in cookie and an Origin of this server; the relay replaces whatever
  key the page offers with the station's own, so trame's public default key opens nothing, and the
  station refuses any client that does not come through here;
- one page per reader at a time: a second tab is refused (the first keeps its read);
- a revoked or expired sign-in closes the open page within seconds;
- a coordinator who signs in sees progress, the washout calendar, overrides and sign-ins.

Listening beyond this computer needs `--allow-network`; put it behind a TLS reverse proxy and give
`--public-url https://...` (README).
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .errors import InputError
from .runner import popen_platform_kwargs, stop_process_tree

COOKIE = "llnassist_signin"
CLOSE_SECOND_TAB = 4409  # websocket close codes the page explains (see _PAGE_GUARD)
CLOSE_SIGNED_OUT = 4401
_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length", "content-encoding",
        "set-cookie", "server", "date"}

# Injected into the station's page: explains why the connection closed instead of a blank page.
_PAGE_GUARD = """<script>(function(){var W=window.WebSocket;function G(u,p){var s=p===undefined?new W(u):new W(u,p);
s.addEventListener('close',function(e){if(e.code===4409||e.code===4401){document.body.innerHTML=
'<div id="llnassist-refused" style="font:16px sans-serif;margin:3em">'+(e.reason||'closed')+'</div>';}});return s;}
G.prototype=W.prototype;G.CONNECTING=0;G.OPEN=1;G.CLOSING=2;G.CLOSED=3;window.WebSocket=G;})();</script>"""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Station:
    """One reader's trame-slicer process."""

    def __init__(self, reader: str, study_location: str, key_dir: Path):
        self.reader = reader
        self.port = _free_port()
        self.key = secrets.token_urlsafe(32)
        key_file = key_dir / f"{secrets.token_hex(8)}.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.key)
        self.key_file = key_file
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(key_dir / f"station-{secrets.token_hex(4)}.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "LLNAssistLib.cli", "study", "reader-worker", study_location, "--reader", reader,
             "--port", str(self.port), "--auth-key-file", str(key_file)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=str(Path(__file__).resolve().parent.parent), **popen_platform_kwargs())
        self.log_path = log.name
        self.ready = False
        self.last_used = time.monotonic()
        self.socket = None  # the one page connected now
        self.login = None  # and the sign-in it came with

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            stop_process_tree(self.proc.pid, grace_s=3.0)
            self.proc.wait()
        try:
            self.key_file.unlink()
        except OSError:
            pass


class ReadingServer:
    def __init__(self, study_location: str, host: str = "127.0.0.1", port: int = 8080,
                 public_url: Optional[str] = None, idle_minutes: float = 30.0):
        from .readerstudy import Study

        self.study_location = study_location
        self.study = Study.open(study_location)
        self._db_lock = threading.Lock()  # one study connection, used from the executor threads
        self.host, self.port = host, port
        self.public_url = public_url.rstrip("/") if public_url else None
        self.origins = self._origins(host, port, self.public_url)
        self.hosts = {urlsplit(o).netloc for o in self.origins}
        self.idle_s = idle_minutes * 60
        self.key_dir = Path(tempfile.mkdtemp(prefix="llnassist-stations-"))
        self.stations: dict[str, Station] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self.http = None

    # -- who is asking --------------------------------------------------------------------------------
    @staticmethod
    def _origins(host: str, port: int, public_url: Optional[str]) -> set:
        """The Origins of this server's own pages; their host:port are the Host names it answers to."""
        if public_url:
            u = urlsplit(public_url)
            return {f"{u.scheme}://{u.netloc}"}
        hosts = {host, "127.0.0.1", "localhost"} if _is_loopback(host) else {host}
        return {f"http://{h}:{port}" for h in hosts}

    def host_allowed(self, request) -> bool:
        """A Host this server is known by (a page from a re-bound DNS name gets nothing)."""
        return request.host in self.hosts

    async def db(self, fn, *args):
        def call():
            with self._db_lock:
                return fn(self.study, *args)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def user(self, request):
        from .readerstudy.access import user_of

        return await self.db(user_of, request.cookies.get(COOKIE))

    # -- stations -------------------------------------------------------------------------------------
    async def station(self, reader: str) -> Station:
        import aiohttp

        lock = self._starting.setdefault(reader, asyncio.Lock())
        async with lock:
            st = self.stations.get(reader)
            if st is not None and st.alive() and st.ready:
                st.last_used = time.monotonic()
                return st
            if st is not None:
                st.stop()
            st = Station(reader, self.study_location, self.key_dir)
            self.stations[reader] = st
            t0 = time.monotonic()
            while time.monotonic() - t0 < 180:
                if not st.alive():
                    tail = Path(st.log_path).read_text(encoding="utf-8", errors="replace")[-600:]
                    raise InputError(f"the reading station of {reader} did not start: {tail.strip()}")
                try:
                    async with self.http.get(st.url + "/", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            st.ready = True
                            return st
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.3)
            st.stop()
            raise InputError(f"the reading station of {reader} did not start within 3 minutes")

    async def reaper(self) -> None:
        """Closes pages whose sign-in was revoked or expired, and stops idle stations."""
        from .readerstudy.access import user_of

        while True:
            await asyncio.sleep(2.0)
            for reader, st in list(self.stations.items()):
                ws = st.socket
                if ws is not None and not ws.closed:
                    user = await self.db(user_of, st.login)
                    if user is None or user.user_id != reader:
                        await ws.close(code=CLOSE_SIGNED_OUT, message=b"Your sign-in has ended (revoked or expired); "
                                                                      b"ask the study coordinator for a new link.")
                    else:
                        st.last_used = time.monotonic()
                elif time.monotonic() - st.last_used > self.idle_s or not st.alive():
                    self.stations.pop(reader, None)
                    await asyncio.get_running_loop().run_in_executor(None, st.stop)

    def stop_all(self) -> None:
        for st in self.stations.values():
            st.stop()
        self.stations.clear()
        shutil.rmtree(self.key_dir, ignore_errors=True)

    # -- handlers -------------------------------------------------------------------------------------
    @staticmethod
    def page(title: str, body: str, status: int = 200):
        from aiohttp import web

        text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                "<style>body{font:15px sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
                "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}</style></head>"
                f"<body><h2>{html.escape(title)}</h2>{body}</body></html>")
        return web.Response(text=text, content_type="text/html", status=status)

    async def signin(self, request):
        from aiohttp import web

        from .readerstudy.access import AccessRefused, sign_in

        try:
            login, user = await self.db(sign_in, request.query.get("token", ""))
        except AccessRefused as exc:
            return self.page("Sign-in refused", f"<p id='message'>{html.escape(str(exc))}</p>", status=403)
        resp = web.HTTPSeeOther("/")
        secure = bool(self.public_url and self.public_url.startswith("https://"))
        resp.set_cookie(COOKIE, login, httponly=True, samesite="Strict", secure=secure, path="/",
                        max_age=int(60 * 60 * 24 * 366))
        return resp

    async def signout(self, request):
        from aiohttp import web

        from .readerstudy.access import sign_out

        login = request.cookies.get(COOKIE)
        if login:
            await self.db(sign_out, login)
        resp = web.HTTPSeeOther("/signed-out")
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def signed_out(self, request):
        return self.page("Signed out", "<p>You are signed out. Use a new sign-in link to read again.</p>")

    async def any_get(self, request):
        user = await self.user(request)
        if user is None:
            return self.page("LLNAssist reader study", "<p id='message'>Sign in with the personal link your study "
                             "coordinator sent you (it works once). Nothing of the study is shown before "
                             "sign-in.</p>", status=401)
        if user.role == "coordinator":
            if request.path == "/status.json":
                from aiohttp import web

                return web.json_response(await self.db(coordinator_overview, self.connected()))
            return self.page("Reader study: coordinator view",
                             coordinator_html(await self.db(coordinator_overview, self.connected())))
        if user.role != "reader":
            return self.page("LLNAssist reader study", f"<p id='message'>{html.escape(user.user_id)} is a "
                             f"{user.role} of this study; there is nothing to read here.</p>", status=403)
        return await self.relay_http(request, await self.station(user.user_id))

    def connected(self) -> dict:
        return {r: st.socket is not None and not st.socket.closed for r, st in self.stations.items()}

    async def relay_http(self, request, st: Station):
        from aiohttp import web

        async with self.http.get(st.url + request.path_qs) as r:
            body = await r.read()
            headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
            if r.content_type == "text/html":
                body = body.replace(b"<head>", b"<head>" + _PAGE_GUARD.encode(), 1)
                headers["Cache-Control"] = "no-store"
            return web.Response(body=body, status=r.status, headers=headers)

    async def websocket(self, request):
        from aiohttp import web

        if request.headers.get("Origin") not in self.origins:
            return web.Response(status=403, text="websocket refused: not from this server's page")
        user = await self.user(request)
        if user is None or user.role != "reader":
            return web.Response(status=401, text="websocket refused: sign in first")
        st = await self.station(user.user_id)
        for _ in range(30):  # a reload closes the old page's socket a moment after the new one asks
            if st.socket is None or st.socket.closed:
                break
            await asyncio.sleep(0.1)
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if st.socket is not None and not st.socket.closed:
            await ws.close(code=CLOSE_SECOND_TAB, message=b"This reading is already open in another tab or window. "
                                                          b"Read there, or close it and reload this page.")
            return ws
        st.socket, st.login = ws, request.cookies.get(COOKIE)
        try:
            async with self.http.ws_connect(st.url.replace("http", "ws") + "/ws", max_msg_size=0) as up:
                await asyncio.gather(self._pump_up(ws, up, st.key), self._pump_down(up, ws))
        finally:
            st.socket = None
            st.last_used = time.monotonic()
            if not ws.closed:
                await ws.close()
        return ws

    @staticmethod
    async def _pump_up(ws, up, key: str) -> None:
        """Page -> station. The wslink hello's key is replaced by the station's: the page never
        holds a key, and one it offers (trame's default or any other) is ignored."""
        from aiohttp import WSMsgType

        hello_done = False
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    data = msg.data
                    if not hello_done:
                        data, hello_done = rewrite_hello(data, key)
                    await up.send_bytes(data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            await up.close()

    @staticmethod
    async def _pump_down(up, ws) -> None:
        from aiohttp import WSMsgType

        try:
            async for msg in up:
                if msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            if not ws.closed:
                await ws.close()

    # -- app ---------------------------------------------------------------------------------------------
    def app(self):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            if not self.host_allowed(request):
                return web.Response(status=421, text="unknown host name for this reading server")
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, text="method not allowed")
            resp = await handler(request)
            resp.headers.setdefault("X-Frame-Options", "DENY")
            resp.headers.setdefault("Referrer-Policy", "no-referrer")
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            return resp

        app = web.Application(middlewares=[guard])
        app.router.add_get("/signin", self.signin)
        app.router.add_get("/signout", self.signout)
        app.router.add_get("/signed-out", self.signed_out)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/{tail:.*}", self.any_get)

        async def startup(_app):
            import aiohttp

            self.http = aiohttp.ClientSession(auto_decompress=False)
            _app["reaper"] = asyncio.get_running_loop().create_task(self.reaper())

        async def cleanup(_app):
            _app["reaper"].cancel()
            await self.http.close()
            self.stop_all()
            self.study.close()

        app.on_startup.append(startup)
        app.on_cleanup.append(cleanup)
        return app


def rewrite_hello(data: bytes, key: str) -> tuple[bytes, bool]:
    """If this wslink frame is the hello (one small chunk, msgpack), returns it carrying `key`."""
    import msgpack
    from wslink.chunking import HEADER_LENGTH, _decode_header, generate_chunks

    if len(data) <= HEADER_LENGTH or len(data) > 4096:
        return data, False
    _, offset, size = _decode_header(data[:HEADER_LENGTH])
    if offset != 0 or size != len(data) - HEADER_LENGTH:
        return data, False
    try:
        msg = msgpack.unpackb(data[HEADER_LENGTH:], raw=False)
    except Exception:  # not a complete msgpack message: pass it on; the station refuses it
        return data, False
    if not isinstance(msg, dict) or msg.get("method") != "wslink.hello":
        return data, False
    args = msg.get("args") if isinstance(msg.get("args"), list) and msg.get("args") else [{}]
    if not isinstance(args[0], dict):
        args[0] = {}
    args[0]["secret"] = key
    msg["args"] = args
    return b"".join(generate_chunks(msgpack.packb(msg, use_bin_type=True), 0)), True


def coordinator_overview(study, connected: dict) -> dict:
    """Progress per reader and session, when each reader's next read opens (the washout calendar),
    overrides and corrections, and sign-ins; nothing identifies a patient."""
    from .readerstudy.access import access_list

    status = study.status()
    readers = []
    for rd in status["readers"]:
        nxt = study.next_read(rd["reader_id"]) if rd["active"] else None
        readers.append({**rd, "connected": bool(connected.get(rd["reader_id"])),
                        "next": None if nxt is None else {"session": nxt["session"], "available": nxt["available"],
                                                          "waiting": nxt.get("waiting_reason", "")}})
    events = [{"at": a["at"], "actor": a["actor"], "action": a["action"], "detail": a["detail"]}
              for a in study.audit_log() if a["action"] in ("override_washout", "correct", "revoke_access",
                                                              "remove_reader")]
    return {"study": status["name"], "design": status["design"], "washout_days": status["washout_days"],
            "frozen": status["frozen"], "n_cases": status["n_cases"], "readers": readers, "events": events,
            "access": access_list(study), "chain_head": study.chain_head()}


def coordinator_html(o: dict) -> str:
    e = html.escape
    rows = []
    for r in o["readers"]:
        s1, s2 = r["sessions"]["1"], r["sessions"]["2"]
        nxt = r["next"]
        when = ("all read" if nxt is None else f"session {nxt['session']} open" if nxt["available"] else
                e(nxt["waiting"]))
        rows.append(f"<tr class='reader'><td>{e(r['reader_id'])}</td><td>{e(r['name'] or '')}</td>"
                    f"<td>{s1['done']}/{s1['total']}</td><td>{s2['done']}/{s2['total']}</td><td>{when}</td>"
                    f"<td>{'reading now' if r['connected'] else ''}{'' if r['active'] else ' removed'}</td></tr>")
    events = "".join(f"<tr><td>{e(ev['at'][:16])}</td><td>{e(ev['actor'])}</td><td>{e(ev['action'])}</td>"
                     f"<td>{e(json.dumps(ev['detail'])[:300])}</td></tr>" for ev in o["events"]) or \
        "<tr><td colspan=4>none</td></tr>"
    access = "".join(f"<tr><td>{e(a['user'])}</td><td>{e(a['kind'])}</td><td>{e(a['state'])}</td>"
                     f"<td>{e(a['expires_at'][:16])}</td></tr>" for a in o["access"])
    return (f"<meta http-equiv='refresh' content='30'><p>{e(o['study'])}: {e(o['design'])} design, washout "
            f"{o['washout_days']:g} days, {o['n_cases']} cases, protocol {'frozen' if o['frozen'] else 'open'}. "
            "<a href='/signout'>Sign out</a></p>"
            "<h3>Readers</h3><table id='readers'><tr><th>reader</th><th>name</th><th>session 1</th><th>session 2</th>"
            f"<th>next read (washout calendar)</th><th></th></tr>{''.join(rows)}</table>"
            f"<h3>Overrides, corrections, revocations</h3><table id='events'><tr><th>when (UTC)</th><th>by</th>"
            f"<th>what</th><th>detail</th></tr>{events}</table>"
            f"<h3>Sign-in links and sign-ins</h3><table id='access'><tr><th>user</th><th>kind</th><th>state</th>"
            f"<th>expires</th></tr>{access}</table><p>Audit chain head <code>{e(o['chain_head'] or '')}</code></p>")


def serve(study_location: str, host: str = "127.0.0.1", port: int = 8080, allow_network: bool = False,
          public_url: Optional[str] = None, idle_minutes: float = 30.0) -> None:
    try:
        import aiohttp  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError:
        raise InputError("the reading server needs trame-slicer; install it with `pip install trame-slicer`") from None
    if not _is_loopback(host) and not allow_network:
        raise InputError(f"--host {host} would let other computers reach the reading server; add --allow-network "
                         "and put it behind a TLS reverse proxy (see the README), or keep the default 127.0.0.1")
    if public_url and urlsplit(public_url).scheme not in ("http", "https"):
        raise InputError(f"--public-url {public_url} must start with https:// (or http:// on this computer)")
    if not (0 < idle_minutes < 24 * 60):
        raise InputError("--idle-minutes must be between 0 and 1440")
    from aiohttp import web

    server = ReadingServer(study_location, host, port, public_url, idle_minutes)
    where = public_url or f"http://{host}:{port}"
    print(f"LLNAssist reading server for {server.study.protocol['name']!r} at {where}; readers sign in with "
          "`llnassist study invite` links", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None, access_log=None)
