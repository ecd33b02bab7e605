"""Helpers for the `tiwiz serve` tests: the server started as the console script starts it (a real process on a free
port), a few-line path-prefix reverse proxy (aiohttp), and the screen a browser page's terminal shows, rebuilt from
the bytes its websocket received."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TIWIZ = Path(sys.executable).with_name("tiwiz")  # the console script
BANNER_END = "Ctrl+C stops the server"


class Served:
    """A running `tiwiz serve`: `url` is the first line's address (with the token), `base` the same without it."""

    def __init__(self, proc: subprocess.Popen, lines: list[str]) -> None:
        self.proc, self.lines = proc, lines
        self.url = lines[0].split("open ", 1)[1].strip()
        self.base = self.url.split("?", 1)[0]
        self.token = self.url.split("token=", 1)[1] if "token=" in self.url else ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1].strip("/"))

    def stop(self) -> str:
        """SIGINT (Ctrl+C), wait, return everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return "\n".join(self.lines)


def serve_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TIWIZ_TOKEN", "RUNPOD_POD_ID", "TIWIZ_RUNS_DIR")}
    env.update({"TIWIZ_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def start_serve(tmp_path: Path, *args: str, env: dict | None = None, command=None, timeout: float = 60) -> Served:
    """`tiwiz serve --port 0 --runs RUNS ARGS` (or `command`), waiting for its banner."""
    cmd = command or [str(TIWIZ), "serve", "--port", "0", "--runs", str(tmp_path / "runs"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=env or serve_env(tmp_path))
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"tiwiz serve ended before listening:\n" + "".join(lines))
        lines.append(line.rstrip("\n"))
        if BANNER_END in line:
            return Served(proc, lines)
    proc.kill()
    raise AssertionError("tiwiz serve printed no banner:\n" + "\n".join(lines))


# --- a reverse proxy with a path prefix ----------------------------------------------------------------------------

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length", "content-encoding", "host"}


class PrefixProxy:
    """http://127.0.0.1:PORT/PREFIX/... -> UPSTREAM/..., websockets included, in a thread of its own. Its client
    keeps no cookies: only the browser's own cookie header passes."""

    def __init__(self, upstream: str, prefix: str = "tiwiz") -> None:
        self.upstream, self.prefix = upstream.rstrip("/"), prefix
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)
        self.base = f"http://127.0.0.1:{self.port}/{prefix}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        import aiohttp
        from aiohttp import web

        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        app = web.Application()
        async def add_slash(request):
            return web.Response(status=301, headers={"Location": f"/{self.prefix}/"})

        app.router.add_get(f"/{self.prefix}", add_slash)
        app.router.add_route("*", f"/{self.prefix}/{{tail:.*}}", self._forward)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _forward(self, request):
        import aiohttp
        from aiohttp import web

        target = f"{self.upstream}/{request.match_info['tail']}"
        target += f"?{request.query_string}" if request.query_string else ""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP and not k.lower().startswith("sec-websocket")}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            try:
                upstream = await self.session.ws_connect(target, headers=headers)
            except aiohttp.WSServerHandshakeError as exc:
                return web.Response(status=exc.status, text="refused upstream\n")
            client = web.WebSocketResponse()
            await client.prepare(request)
            await asyncio.gather(_pump(client, upstream), _pump(upstream, client))
            return client
        async with self.session.request(request.method, target, headers=headers, data=await request.read(),
                                        allow_redirects=False) as response:
            body = await response.read()
            out = web.Response(status=response.status, body=body)
            for key, value in response.headers.items():
                if key.lower() not in HOP:
                    out.headers.add(key, value)
            return out

    def close(self) -> None:
        async def stop():
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _pump(source, sink) -> None:
    from aiohttp import WSMsgType

    async for message in source:
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:
            break
    await sink.close()


# --- what the page's terminal shows ---------------------------------------------------------------------------------

# Installed in the page before textual.js runs: keeps every byte the websocket delivers to the terminal.
CAPTURE_SCRIPT = """
window.__frames = [];
window.__sockets = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    window.__sockets.push(String(url));
    const decoder = new TextDecoder();
    this.addEventListener("message", (event) => {
      if (typeof event.data !== "string") window.__frames.push(decoder.decode(event.data, {stream: true}));
    });
  }
};
"""
CSI = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])")


def screen_lines(data: str, cols: int = 200, rows: int = 80) -> list[str]:
    """The terminal's screen after `data` (cursor moves, text, erase; colours ignored), row by row."""
    grid = [[" "] * cols for _ in range(rows)]
    x = y = i = 0
    while i < len(data):
        ch = data[i]
        if ch == "\x1b":
            match = CSI.match(data, i)
            if match:
                params, final = match.groups()
                if final == "H":
                    row, _, col = params.partition(";")
                    y, x = int(row or 1) - 1, int(col or 1) - 1
                elif final == "J" and params in ("2", "3"):
                    grid = [[" "] * cols for _ in range(rows)]
                i = match.end()
                continue
            if data.startswith("\x1b]", i):  # OSC ... BEL
                end = data.find("\x07", i)
                i = len(data) if end < 0 else end + 1
                continue
            i += 2
            continue
        if ch == "\r":
            x = 0
        elif ch == "\n":
            y += 1
        elif ch >= " ":
            if 0 <= y < rows and 0 <= x < cols:
                grid[y][x] = ch
            x += 1
        i += 1
    return ["".join(row).rstrip() for row in grid]


def page_screen(page) -> str:
    return "\n".join(screen_lines("".join(page.evaluate("window.__frames || []"))))


def wait_for_screen(page, text: str, timeout: float = 90.0) -> str:
    """Wait until the page's terminal shows `text`; returns the screen."""
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = page_screen(page)
        if text in screen:
            return screen
        page.wait_for_timeout(200)
    raise AssertionError(f"the page never showed {text!r}; it shows:\n{screen}")


def wait_until_drawn(page, quiet_ms: int = 1000, timeout: float = 60.0) -> None:
    """Wait until the screen's text has not changed for `quiet_ms` (a screen that just opened has settled; a
    blinking cursor changes no text), as a user looks at a screen before clicking on it."""
    deadline = time.monotonic() + timeout
    shown = page_screen(page)
    while time.monotonic() < deadline:
        page.wait_for_timeout(quiet_ms)
        now = page_screen(page)
        if now == shown:
            return
        shown = now


def click_text(page, text: str) -> None:
    """Click the middle of `text` where the page's terminal shows it (a mouse click on the wizard), once the screen
    has settled."""
    wait_until_drawn(page)
    lines = page_screen(page).splitlines()
    row = next(i for i, line in enumerate(lines) if text in line)
    col = lines[row].index(text) + len(text) / 2
    query = page.evaluate("window.__sockets[window.__sockets.length - 1]").split("?", 1)[1]
    size = dict(part.split("=") for part in query.split("&"))
    box = page.locator(".xterm-screen").bounding_box()
    cell_w, cell_h = box["width"] / int(size["width"]), box["height"] / int(size["height"])
    page.mouse.click(box["x"] + col * cell_w, box["y"] + (row + 0.5) * cell_h)

