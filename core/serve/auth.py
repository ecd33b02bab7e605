"""The token every request must carry, as Jupyter does it: made at random at start (or `--token`, or TIWIZ_TOKEN),
printed in the URL; the first request with `?token=` gets it as an HttpOnly cookie and is redirected to the same
address without it, so the token leaves the address bar and the browser history. A request without a valid token
(query, cookie or an `Authorization: token ...` header) gets 401 (none) or 403 (a wrong one) and nothing else, the
websocket upgrade included. Tokens are compared in constant time. The access log writes paths without their query,
so the token is never logged."""

from __future__ import annotations

import hmac
import os
import re
import secrets
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from core.errors import FieldError

TOKEN_ENV = "TIWIZ_TOKEN"
QUERY = "token"
MIN_TOKEN = 8
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")  # what goes into a URL unescaped
COOKIE_DAYS = 30
SECRET = web.AppKey("tiwiz_token", str)  # the app's token, for the access log's redaction

NO_TOKEN = ("tiwiz: this address needs the token. Open the address `tiwiz serve` printed when it started (it ends in "
            "?token=...); the browser remembers it afterwards.\n")
WRONG_TOKEN = ("tiwiz: wrong token. Open the address `tiwiz serve` printed when it started (a restarted server makes "
               "a new token unless --token or TIWIZ_TOKEN sets it).\n")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def choose_token(given: str | None, no_token: bool = False, env=None) -> str:
    """The token to require: `--token`, else $TIWIZ_TOKEN, else a new random one. "" means none: only with
    `--no-token`, or a token given explicitly empty."""
    env = os.environ if env is None else env
    if no_token:
        return ""
    source = "--token"
    if given is None:
        given, source = env.get(TOKEN_ENV), TOKEN_ENV
    if given is None:
        return new_token()
    given = given.strip()
    if given and len(given) < MIN_TOKEN:
        raise FieldError("token", f"{source}: use at least {MIN_TOKEN} characters (or leave it out for a random one)")
    if given and not TOKEN_CHARS.fullmatch(given):
        raise FieldError("token", f"{source}: use letters, digits and . _ ~ - only (the token goes into a URL)")
    return given


def same_token(offered: str, token: str) -> bool:
    return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode("utf-8"))


def cookie_name(port: int) -> str:
    # Cookies do not tell ports apart: two servers on one host (8000, 8001) must not overwrite each other's.
    return f"tiwiz_token_{port}"


def offered_token(request: web.Request, cookie: str) -> tuple[str | None, bool]:
    """(the token the request offers, whether it came in the query)."""
    if QUERY in request.query:
        return request.query[QUERY], True
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip(), False
    return request.cookies.get(cookie), False


def without_token(request: web.Request) -> str:
    """The request's own address without `token=`, relative to itself ("./page?x=1"), so the redirect works under
    any path prefix a reverse proxy adds."""
    last = request.rel_url.raw_path.rsplit("/", 1)[-1]
    rest = [(k, v) for k, v in request.query.items() if k != QUERY]
    return "./" + last + ("?" + urlencode(rest) if rest else "")


def is_https(request: web.Request) -> bool:
    return request.scheme == "https" or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def token_gate(token: str, port: int):
    """The middleware that lets through only requests with the token (every request when `token` is "")."""
    cookie = cookie_name(port)

    @web.middleware
    async def gate(request: web.Request, handler):
        if not token:
            return await handler(request)
        offered, in_query = offered_token(request, cookie)
        if offered is None:
            return web.Response(status=401, text=NO_TOKEN)
        if not same_token(offered, token):
            return web.Response(status=403, text=WRONG_TOKEN)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if in_query and request.method in ("GET", "HEAD") and not upgrade:
            response = web.Response(status=303, headers={"Location": without_token(request)})
            response.set_cookie(cookie, token, httponly=True, samesite="Lax", path="/", secure=is_https(request),
                                max_age=COOKIE_DAYS * 86400)
            return response
        return await handler(request)

    return gate


@web.middleware
async def security_headers(request: web.Request, handler):
    """No page of ours sends its address (which may hold the token on a first visit) to another site, and none is
    framed by another site."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if not response.prepared:
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if isinstance(response, web.HTTPException):
        raise response
    return response


class AccessLog(AbstractAccessLogger):
    """One line per request: client, method, path (never the query, where the token travels), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path
        secret = request.app.get(SECRET, "") if hasattr(request, "app") else ""
        if secret and secret in path:
            path = path.replace(secret, "…")
        self.logger.info("%s %s %s %s %.0fms", request.remote, request.method, path, response.status, time * 1000)
