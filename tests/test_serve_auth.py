"""The token of `tiwiz serve`, on a real server process started as the console script starts it: every HTTP request
and every websocket upgrade without a valid token gets 401/403 and nothing else; the first request with ?token= gets
an HttpOnly cookie and a redirect that drops the token from the address; a public host without a token is refused;
the token is never printed after the first line; the printed addresses (RunPod proxy, SSH tunnel, --public-url)."""

from __future__ import annotations

import asyncio
import socket
import sys
import subprocess

import aiohttp
import pytest

from core.errors import FieldError
from core.serve import auth, urls
from tests.serve_support import TIWIZ, serve_env, start_serve
from tests.tui_support import recorded_events, write_recorded_run

RUN = "mycat-20250615-101010"
PROTECTED = ["", "ws", "static/js/textual.js", "runs/", f"runs/{RUN}/", f"runs/{RUN}/loss.png",
             f"runs/{RUN}/previews/mycat-40.png", "download/x"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-auth")
    write_recorded_run(tmp / "runs" / RUN, recorded_events("mycat", steps=80, max_steps=80, finished=True),
                       state="finished")
    server = start_serve(tmp)
    yield server
    server.stop()


async def _get(url: str, *, cookies=None, headers=None, websocket=False):
    async with aiohttp.ClientSession(cookies=cookies) as session:
        if websocket:
            try:
                async with session.ws_connect(url, headers=headers) as ws:
                    await ws.close()
                    return 101, ""
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, ""
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text(errors="replace")


def get(url: str, **kwargs):
    return asyncio.run(_get(url, **kwargs))


def test_every_request_without_a_valid_token_is_refused(served):
    wrong = served.token[:-1] + ("a" if served.token[-1] != "a" else "b")
    cookie = auth.cookie_name(served.port)
    for path in PROTECTED:
        url = served.base + path
        websocket = path == "ws"
        for offered, expected in ((None, 401), ({"token": wrong}, 403), ({"token": served.token[:-1]}, 403),
                                  ({"token": ""}, 403)):
            query = f"?token={offered['token']}" if offered else ""
            status, body = get(url + query, websocket=websocket)
            assert status == expected, (path, offered, status)
            assert body in ("", auth.NO_TOKEN, auth.WRONG_TOKEN)  # nothing of the app's
        assert get(url, cookies={cookie: wrong}, websocket=websocket)[0] == 403
        assert get(url, headers={"Authorization": f"token {wrong}"}, websocket=websocket)[0] == 403
        assert get(url, cookies={cookie: served.token}, websocket=websocket)[0] in (101, 200, 404)
        assert get(url, headers={"Authorization": f"token {served.token}"}, websocket=websocket)[0] in (101, 200, 404)


async def _first_visit(url: str):
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False) as first:
            set_cookie = first.headers.getall("Set-Cookie")
            location = first.headers.get("Location")
            status = first.status
        async with session.get(first.url.join(aiohttp.client.URL(location))) as second:
            return status, location, set_cookie, second.status, str(second.url)


def test_the_first_visit_sets_an_httponly_cookie_and_drops_the_token_from_the_address(served):
    status, location, set_cookie, then, final = asyncio.run(_first_visit(served.url))
    assert (status, location, then, final) == (303, "./", 200, served.base)
    (cookie,) = set_cookie
    assert cookie.startswith(f"{auth.cookie_name(served.port)}={served.token};")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    # any page: the redirect is relative to the page (a proxy's path prefix stays) and keeps the other parameters
    status, location, _, then, final = asyncio.run(_first_visit(
        f"{served.base}runs/{RUN}/loss.png?v=3&token={served.token}"))
    assert (status, location, then, final) == (303, "./loss.png?v=3", 200, f"{served.base}runs/{RUN}/loss.png?v=3")


def test_the_token_is_never_logged_after_the_first_line(tmp_path):
    server = start_serve(tmp_path, "--token", "sesame-1234567")
    assert server.url.endswith("?token=sesame-1234567")
    for path in ("", "?token=sesame-1234567", "runs/?token=sesame-1234567", "sesame-1234567?x=1", "?token=wrong"):
        get(server.base + path)
    get(server.base + "ws?token=sesame-1234567", websocket=True)
    output = server.stop().splitlines()
    assert "sesame-1234567" in output[0]
    logged = output[1:]
    assert any(" GET / 303 " in line for line in logged) and any(" GET /ws " in line for line in logged)
    assert not [line for line in logged if "sesame" in line]


@pytest.mark.parametrize("args,env", [
    (["--no-token"], {}),
    (["--token", ""], {}),
    ([], {"TIWIZ_TOKEN": ""}),
])
def test_a_public_host_without_a_token_is_refused(tmp_path, args, env):
    result = subprocess.run([str(TIWIZ), "serve", "--host", "0.0.0.0", "--port", "0", *args],
                            cwd=tmp_path, env=serve_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--host 0.0.0.0" in result.stderr and "needs a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_loopback_without_a_token_serves_and_says_so(tmp_path):
    server = start_serve(tmp_path, "--no-token")
    try:
        assert "token" not in server.url
        assert any("no token: anyone who can open" in line for line in server.lines)
        assert get(server.base + "runs/")[0] == 200
    finally:
        server.stop()


def test_token_rules():
    assert len(auth.choose_token(None, env={})) >= 32
    assert auth.choose_token(None, env={}) != auth.choose_token(None, env={})
    assert auth.choose_token(None, env={"TIWIZ_TOKEN": "from-the-env-1"}) == "from-the-env-1"
    assert auth.choose_token("given-token-1", env={"TIWIZ_TOKEN": "from-the-env-1"}) == "given-token-1"
    assert auth.choose_token("given", no_token=True, env={}) == ""
    with pytest.raises(FieldError) as short:
        auth.choose_token("abc", env={})
    assert short.value.field == "token" and "--token" in str(short.value)
    with pytest.raises(FieldError):
        auth.choose_token("has space in it", env={})
    assert auth.same_token("abcdefgh", "abcdefgh") and not auth.same_token("abcdefg", "abcdefgh")
    assert all(urls.is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(urls.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "pod.example.com", ""))
    urls.check_bind("127.0.0.1", "")
    urls.check_bind("0.0.0.0", "a-token-1")
    with pytest.raises(FieldError) as refused:
        urls.check_bind("::", "")
    assert refused.value.field == "host"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_lines_name_every_way_in(tmp_path):
    lines = urls.start_lines("0.0.0.0", 8000, "T0KEN-123", None, tmp_path, env={"RUNPOD_POD_ID": "abc123"})
    assert lines[0] == "tiwiz serve: open https://abc123-8000.proxy.runpod.net/?token=T0KEN-123"
    assert any("on this machine: http://localhost:8000/?token=… (the token above)" in line for line in lines)
    assert not any("T0KEN" in line for line in lines[1:])  # the first line only
    lines = urls.start_lines("127.0.0.1", 8000, "T0KEN-123", None, tmp_path, env={"RUNPOD_POD_ID": "abc123"})
    assert lines[0] == "tiwiz serve: open http://localhost:8000/?token=T0KEN-123"
    assert any("--host 0.0.0.0" in line and "abc123-8000.proxy.runpod.net" in line for line in lines)
    assert any("ssh -N -L 8000:localhost:8000 " in line for line in lines)
    lines = urls.start_lines("127.0.0.1", 8123, "T0KEN-123", None, tmp_path, env={})
    assert any("ssh -N -L 8123:localhost:8123 " in line for line in lines)
    public = urls.check_public_url("https://example.com/tiwiz")
    lines = urls.start_lines("127.0.0.1", 8000, "T0KEN-123", public, tmp_path, env={})
    assert lines[0] == "tiwiz serve: open https://example.com/tiwiz/?token=T0KEN-123"
    with pytest.raises(FieldError) as bad:
        urls.check_public_url("example.com/tiwiz")
    assert bad.value.field == "public_url"


def test_printed_addresses_of_a_real_server_on_runpod(tmp_path):
    port = _free_port()
    server = start_serve(tmp_path, command=[str(TIWIZ), "serve", "--host", "0.0.0.0", "--port", str(port),
                                            "--public-url", "https://example.com/tiwiz/"],
                         env=serve_env(tmp_path, RUNPOD_POD_ID="pod42"))
    try:
        assert server.lines[0] == f"tiwiz serve: open https://example.com/tiwiz/?token={server.token}"
        assert any(f"RunPod proxy:    https://pod42-{port}.proxy.runpod.net/?token=…" in line
                   for line in server.lines)
        assert server.token not in "\n".join(server.lines[1:])
        status, _ = get(f"http://127.0.0.1:{port}/runs/", headers={"Authorization": f"token {server.token}"})
        assert status == 200
    finally:
        server.stop()


def test_wizard_serve_port_is_an_alias(tmp_path):
    """`tiwiz wizard --serve PORT` (it failed with "unrecognized arguments: PORT") serves the wizard and the runs."""
    port = _free_port()
    runs = tmp_path / "elsewhere"
    server = start_serve(tmp_path, command=[str(TIWIZ), "wizard", "--serve", str(port), "--runs", str(runs)])
    try:
        assert server.base == f"http://localhost:{port}/"
        assert any(str(runs) in line for line in server.lines)
        status, page = get(server.base, headers={"Authorization": f"token {server.token}"})
        assert status == 200 and "static/js/textual.js" in page
    finally:
        server.stop()


async def _first_ping(url: str, token: str, limit_s: float) -> bool:
    async with aiohttp.ClientSession(headers={"Authorization": f"token {token}"}) as session:
        async with session.ws_connect(url, autoping=False) as ws:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit_s
            while loop.time() < deadline:
                message = await ws.receive(timeout=deadline - loop.time())
                if message.type == aiohttp.WSMsgType.PING:
                    return True
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return False
    return False


def test_an_idle_websocket_is_kept_alive_under_the_proxy_limit(served):
    """RunPod's Cloudflare front closes a request idle for 100 s: the server pings the browser's websocket before."""
    assert asyncio.run(_first_ping(served.base.replace("http:", "ws:") + "ws?width=80&height=24", served.token, 95))


def test_clear_refusals_port_in_use_bad_port_no_web_extra(served, tmp_path):
    def run(*args, code=None):
        cmd = [str(TIWIZ), "serve", *args] if code is None else [sys.executable, "-c", code]
        return subprocess.run(cmd, cwd=tmp_path, env=serve_env(tmp_path), capture_output=True, text=True, timeout=60)

    busy = run("--port", str(served.port))
    assert busy.returncode == 2 and f"--port {served.port}: already in use" in busy.stderr
    bad = run("--port", "70000")
    assert bad.returncode == 2 and "--port 70000" in bad.stderr
    missing = run(code="import sys; sys.modules['textual_serve'] = None\n"
                       "from core.cli import main; sys.exit(main(['serve', '--port', '0']))")
    assert missing.returncode == 2 and "pip install 'tiwiz[web]'" in missing.stderr
    for result in (busy, bad, missing):
        assert "Traceback" not in result.stderr
