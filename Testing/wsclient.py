"""A bare wslink client (the protocol trame pages speak: msgpack in chunked binary frames), as an
attacker's script or a load generator would use it. For the reading-server tests and the load
benchmark; it is not part of the product."""

from __future__ import annotations

import asyncio
import itertools
from typing import Optional

import aiohttp
import msgpack
from wslink.chunking import UnChunker, generate_chunks

DEFAULT_SECRET = "wslink-secret"  # trame's and wslink's public default


class Refused(Exception):
    pass


class WslinkClient:
    def __init__(self, ws, session):
        self.ws, self.session = ws, session
        self._ids = itertools.count(1)
        self._unchunker = UnChunker()
        self._unchunker.set_max_message_size(1 << 30)
        self._pending: dict = {}
        self.state: dict = {}
        self.updates: asyncio.Queue = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.closed: Optional[tuple] = None

    @classmethod
    async def connect(cls, url: str, cookie: Optional[str] = None, origin: Optional[str] = None,
                      secret: str = DEFAULT_SECRET, cookie_name: str = "llnassist_signin") -> WslinkClient:
        """Opens the websocket and says hello; raises Refused with the reason when either is refused."""
        session = aiohttp.ClientSession(cookies={cookie_name: cookie} if cookie else None)
        headers = {"Origin": origin} if origin else {}
        try:
            ws = await session.ws_connect(url, headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as e:
            await session.close()
            raise Refused(f"handshake {e.status}") from None
        client = cls(ws, session)
        try:
            await client.call("wslink.hello", [{"secret": secret}], rpc_prefix="system")
        except Refused:
            await client.close()
            raise
        return client

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            full = self._unchunker.process_chunk(msg.data)
            if full is None:
                continue
            rid = full.get("id", "")
            if rid.startswith("publish:trame.state.topic"):
                self.state.update(full.get("result") or {})
                self.updates.put_nowait(dict(full.get("result") or {}))
            elif rid in self._pending:
                self._pending.pop(rid).set_result(full)
        self.closed = (self.ws.close_code, getattr(self.ws, "_close_message", None))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Refused(f"connection closed ({self.ws.close_code})"))
        self.updates.put_nowait(None)

    async def call(self, method: str, args=None, kwargs=None, rpc_prefix: str = "rpc", timeout: float = 60):
        rid = f"{rpc_prefix}:c0:{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        payload = msgpack.packb({"wslink": "1.0", "id": rid, "method": method, "args": args or [],
                                 "kwargs": kwargs or {}}, use_bin_type=True)
        for chunk in generate_chunks(payload, 0):
            await self.ws.send_bytes(chunk)
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise Refused(str(reply["error"].get("message", reply["error"])))
        return reply.get("result")

    async def get_state(self) -> dict:
        res = await self.call("trame.state.get")
        self.state.update(res.get("state", {}))
        return self.state

    async def set_state(self, **changes) -> None:
        await self.call("trame.state.update", [[{"key": k, "value": v} for k, v in changes.items()]])

    async def trigger(self, name: str, *args, **kwargs):
        return await self.call("trame.trigger", [name, list(args), kwargs])

    async def wait_for(self, predicate, timeout: float = 60) -> dict:
        """Waits until the pushed state satisfies predicate(state)."""
        async def loop():
            while not predicate(self.state):
                if await self.updates.get() is None:
                    raise Refused(f"connection closed ({self.closed})")
            return self.state
        return await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.session.close()
