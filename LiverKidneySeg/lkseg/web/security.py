"""Who may talk to the web server: bind rules and the access token.

- The server binds 127.0.0.1 by default; only this computer's users can reach it and a token is
  optional. Serving on any other interface requires a token: :func:`resolve_bind` generates one
  when none is given (the CLI prints it, in the URL to open).
- :func:`install_token_guard` makes a trame server (trame-server 4 on wslink's aiohttp backend)
  refuse every HTTP request and the websocket that does not carry the token, with ``403`` and a
  short plain-text message. The token may come as ``?token=...`` in the URL (the first page load),
  as the ``X-LKSeg-Token`` header, or as the ``lkseg_token`` cookie, which the server sets
  (HttpOnly, SameSite=Strict) once the token was seen, so the page's scripts, images and its
  websocket (same origin) pass without the token in every URL.
- Tokens are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from lkseg.errors import InputError

__all__ = [
    "COOKIE_NAME",
    "HEADER_NAME",
    "QUERY_NAME",
    "BindConfig",
    "generate_token",
    "install_origin_guard",
    "install_token_guard",
    "is_loopback",
    "resolve_bind",
    "tokens_match",
    "url_with_token",
]

log = logging.getLogger(__name__)

QUERY_NAME = "token"
HEADER_NAME = "X-LKSeg-Token"
COOKIE_NAME = "lkseg_token"
#: Bytes of entropy of a generated token (256 bits).
TOKEN_BYTES = 32
#: A token given by the user: at least this long, URL-safe characters only.
MIN_TOKEN_CHARS = 16
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.~-]+$")
FORBIDDEN_MESSAGE = (
    "403 Forbidden: this LiverKidneySeg server requires its access token. "
    "Open the address printed by `lkseg web` (it ends in ?token=...).\n"
)


def generate_token() -> str:
    """A new random token: 32 bytes from :mod:`secrets`, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def tokens_match(given: str | None, expected: str) -> bool:
    """Whether ``given`` equals ``expected``, compared in constant time. None or "" never match
    (nor does anything when ``expected`` is empty)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(str(given).encode("utf-8"), str(expected).encode("utf-8"))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this computer only: ``localhost``, 127.0.0.0/8, ``::1``
    (brackets allowed). "", ``0.0.0.0``, ``::`` and any other name or address are not."""
    host = (host or "").strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BindConfig:
    """Where the server listens and the token it requires (None: no token)."""

    host: str
    port: int
    token: str | None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def _check_token(token: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(
            f"the access token is too short ({len(token)} characters; at least {MIN_TOKEN_CHARS}); "
            "leave it out to have one generated"
        )
    if not _TOKEN_RE.match(token):
        raise InputError("the access token may hold only letters, digits and - _ . ~ (it travels in the URL)")
    return token


def resolve_bind(host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> BindConfig:
    """Apply the bind rules.

    Loopback: the token is optional (None unless given). Any other interface (including "" and
    ``0.0.0.0``, i.e. all interfaces): a token is required, generated when not given.

    Raises:
        InputError: port outside 0-65535, an empty host, or a given token that is too short or
            holds characters that do not survive a URL.
    """
    if host is None or not str(host).strip():
        raise InputError("no host to bind: give 127.0.0.1 (this computer only) or an interface address")
    host = str(host).strip()
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise InputError(f"the port must be a whole number 0-65535 (0 picks a free one), not {port!r}") from None
    if not 0 <= port <= 65535:
        raise InputError(f"the port must be 0-65535 (0 picks a free one), not {port}")
    if token is not None and token != "":
        token = _check_token(str(token))
    else:
        token = None
    if token is None and not is_loopback(host):
        token = generate_token()
        log.info("serving on %s: generated an access token", host)
    return BindConfig(host=host, port=port, token=token)


def url_with_token(base_url: str, token: str | None) -> str:
    """``base_url`` with ``?token=...`` appended (unchanged when token is None)."""
    if not token:
        return base_url
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}{QUERY_NAME}={quote(token, safe='')}"


def _token_middleware(token: str):
    from aiohttp import web

    @web.middleware
    async def lkseg_token_guard(request: web.Request, handler):
        from_query = request.query.get(QUERY_NAME)
        from_header = request.headers.get(HEADER_NAME)
        from_cookie = request.cookies.get(COOKIE_NAME)
        cookie_ok = tokens_match(from_cookie, token)
        if not (cookie_ok or tokens_match(from_query, token) or tokens_match(from_header, token)):
            log.warning("refused %s %s from %s: no valid access token", request.method, request.path, request.remote)
            return web.Response(status=403, text=FORBIDDEN_MESSAGE, content_type="text/plain")
        response = await handler(request)
        if not cookie_ok and isinstance(response, web.StreamResponse) and not response.prepared:
            response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Strict", path="/")
        return response

    return lkseg_token_guard


def _add_middleware_on_bind(server, middleware, what: str) -> None:
    """Add an aiohttp ``middleware`` to the trame server's web application when wslink creates it."""
    if getattr(server, "running", False) or getattr(server, "_running_stage", 0):
        raise RuntimeError(f"the {what} must be installed before the server starts")

    def on_bind(ws_server, *args, **kwargs) -> None:
        from aiohttp import web

        app = getattr(ws_server, "app", None)
        if not isinstance(app, web.Application):
            raise RuntimeError(
                f"cannot install the {what}: backend {type(ws_server).__name__} is not "
                "wslink's aiohttp backend (set TRAME_BACKEND=aiohttp)"
            )
        if middleware not in app.middlewares:
            app.middlewares.append(middleware)
        log.info("%s installed", what)

    server.controller.on_server_bind.add(on_bind)


def install_token_guard(server, token: str | None) -> None:
    """Make the trame ``server`` refuse HTTP requests and the websocket without ``token``.

    Call it before ``server.start()``. It adds an aiohttp middleware when wslink creates its web
    application (the ``on_server_bind`` life-cycle hook, added with ``.add`` so an app's own
    ``ctrl.on_server_bind = ...`` does not replace it). A backend other than aiohttp, or a server
    already started, raises instead of serving unguarded. No-op when ``token`` is None.

    Raises:
        RuntimeError: the server is already running, or its web backend is not aiohttp.
        InputError: the token is too short or not URL-safe.
    """
    if token is None:
        return
    _check_token(token)
    _add_middleware_on_bind(server, _token_middleware(token), "access-token guard")


def _host_of(netloc: str) -> str:
    """The host name of ``host[:port]`` / ``[v6]:port`` (lower case, no brackets)."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc[1:]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _origin_middleware(loopback_only: bool):
    from urllib.parse import urlsplit

    from aiohttp import web

    def refuse(request, why: str):
        log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, why)
        return web.Response(status=403, text=f"403 Forbidden: {why}\n", content_type="text/plain")

    @web.middleware
    async def lkseg_origin_guard(request: web.Request, handler):
        host = request.headers.get("Host", "")
        if loopback_only and not is_loopback(_host_of(host)):
            return refuse(request, f"this server answers only as 127.0.0.1/localhost, not as {host!r}")
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != host.strip().lower():
                return refuse(request, f"a page from {origin!r} may not use this server")
        return await handler(request)

    return lkseg_origin_guard


def install_origin_guard(server, bind_host: str) -> None:
    """Protect the trame ``server`` against other web sites the user visits, token or not.

    - Cross-site requests (Cross-Site WebSocket Hijacking): a request carrying an ``Origin`` header
      (browsers send it on every websocket and script request) is refused unless the origin is the
      server itself (``Origin`` host:port equal to ``Host``). Non-browser clients send no Origin.
    - DNS rebinding: when ``bind_host`` is a loopback address, requests whose ``Host`` is not a
      loopback name (``localhost``, 127.x, ``::1``) are refused.

    Call it before ``server.start()`` (with or without :func:`install_token_guard`).

    Raises:
        RuntimeError: the server is already running, or its web backend is not aiohttp.
    """
    _add_middleware_on_bind(server, _origin_middleware(is_loopback(bind_host)), "origin guard")
