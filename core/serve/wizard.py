"""The wizard in a browser, through textual-serve: its page, its static files (xterm.js, textual.js), its websocket
(heartbeat every 15 s, well under the 100 s after which RunPod's Cloudflare front closes an idle request) and its
per-connection app process are textual-serve's. Patched here, not forked:

- textual-serve writes absolute addresses into the page, built from the host and port it binds (textual-serve
  issue #42), which break behind any proxy. Our page has relative static addresses and derives its websocket
  address from its own location (scheme, host, path), so it works through RunPod's proxy, an SSH tunnel and a
  reverse proxy with a path prefix.
- each browser tab gets its own wizard process, started with the served runs folder (`--runs`, TIWIZ_RUNS_DIR) and
  half-block images; training runs in detached workers, so closing a tab never stops one.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import jinja2
from aiohttp import web
from textual_serve.server import Server

from core.runs.api import _PROJECT_ROOT as PROJECT_ROOT

# Set before textual.js reads it on window load: ws(s)://<this page's host and path>ws
WEBSOCKET_FROM_LOCATION = """<script>(function () {
  var url = new URL("ws", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = ""; url.hash = "";
  document.getElementById("terminal").dataset.sessionWebsocketUrl = url.href;
})();</script>"""


def wizard_command(runs_root: Path, app_args=()) -> str:
    """The shell command textual-serve runs for each tab: this interpreter's wizard, on the served runs folder."""
    parts = [sys.executable, "-m", "tui.main", "wizard", "--image-protocol", "halfcell", "--runs", str(runs_root),
             *app_args]
    path = shlex.quote(str(PROJECT_ROOT)) + "${PYTHONPATH:+:$PYTHONPATH}"
    # The app never needs the server's token: keep it out of the app's environment.
    return (f"unset TIWIZ_TOKEN; TIWIZ_RUNS_DIR={shlex.quote(str(runs_root))} PYTHONPATH={path} "
            f"exec {' '.join(shlex.quote(p) for p in parts)}")


class WizardServer(Server):
    """textual-serve's server, used for its handlers only: the aiohttp app, its middlewares (the token) and the
    listening socket are ours (core.serve.server)."""

    def __init__(self, runs_root: Path, app_args=()) -> None:
        super().__init__(wizard_command(runs_root, app_args), title="tiwiz")
        loader = jinja2.FileSystemLoader(str(self.templates_path))
        self.template = jinja2.Environment(loader=loader, autoescape=True).get_template("app_index.html")

    def add_routes(self, app: web.Application) -> None:
        app.add_routes([
            web.get("/", self.handle_index),
            web.get("/ws", self.handle_websocket),  # textual-serve's: heartbeat=15
            web.get("/download/{key}", self.handle_download),
            web.static("/static", self.statics_path),
        ])

    async def handle_index(self, request: web.Request) -> web.Response:
        """textual-serve's page, with relative static addresses and the websocket address from the location."""
        try:
            font_size = min(max(int(request.query.get("fontsize", "16")), 6), 48)
        except ValueError:
            font_size = 16
        page = self.template.render(font_size=font_size, app_websocket_url="", ping_url="",
                                    config={"static": {"url": "static/"}}, application={"name": "tiwiz"})
        page = page.replace("</body>", WEBSOCKET_FROM_LOCATION + "\n</body>", 1)
        page = page.replace("<head>", "<head>\n<meta name=\"referrer\" content=\"no-referrer\"><title>tiwiz</title>", 1)
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})
