"""Access control of the web front end: tokens, bind rules, and a token guard that really protects
a running trame server (HTTP and the websocket), checked with aiohttp/urllib and in Chromium."""

from __future__ import annotations

import asyncio
import hmac
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from lkseg.errors import InputError
from lkseg.web import security
from lkseg.web.security import (
    COOKIE_NAME,
    HEADER_NAME,
    generate_token,
    install_token_guard,
    is_loopback,
    resolve_bind,
    tokens_match,
    url_with_token,
)

# -- tokens and bind rules -------------------------------------------------------------------------


def test_generated_tokens_are_long_random_and_url_safe():
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) >= 43  # 32 bytes in URL-safe base64
        assert all(c.isalnum() or c in "-_" for c in token)
    # 32 random bytes: about 6 bits per character; far from any repeated pattern
    distinct = sum(len(set(t)) for t in tokens) / len(tokens)
    assert distinct > 20


def test_tokens_match_only_the_same_token_and_never_empty():
    token = generate_token()
    assert tokens_match(token, token)
    assert tokens_match(str(token), token)
    assert not tokens_match(token[:-1], token)
    assert not tokens_match(token + "x", token)
    assert not tokens_match(None, token)
    assert not tokens_match("", token)
    assert not tokens_match("", "")
    assert not tokens_match(None, "")
    assert not tokens_match("jeton-été-" + token, token)  # non-ASCII: no TypeError from compare_digest


def test_tokens_are_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert not tokens_match("a" * 43, "b" * 43)
    assert tokens_match("c" * 43, "c" * 43)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("example.org", False),
        ("localhost.example.org", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_loopback_needs_no_token_but_keeps_a_given_one():
    assert resolve_bind() == security.BindConfig("127.0.0.1", 0, None)
    assert resolve_bind("localhost", 8080).token is None
    mine = "a-token-chosen-by-me-123"
    assert resolve_bind("127.0.0.1", 0, mine).token == mine


def test_other_interfaces_get_a_token():
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        config = resolve_bind(host, 9000)
        assert config.token is not None and len(config.token) >= 43
        assert not config.loopback and config.port == 9000
    assert resolve_bind("0.0.0.0").token != resolve_bind("0.0.0.0").token
    mine = "another-chosen-token_42"
    assert resolve_bind("0.0.0.0", 0, mine).token == mine


def test_bad_bind_values_are_refused_clearly():
    with pytest.raises(InputError, match="0-65535"):
        resolve_bind("127.0.0.1", 70000)
    with pytest.raises(InputError, match="whole number"):
        resolve_bind("127.0.0.1", "eighty")
    with pytest.raises(InputError, match="no host"):
        resolve_bind("", 0)
    with pytest.raises(InputError, match="too short"):
        resolve_bind("0.0.0.0", 0, "abc")
    with pytest.raises(InputError, match="letters, digits"):
        resolve_bind("0.0.0.0", 0, "has spaces and ?&= in it")


def test_url_with_token():
    assert url_with_token("http://127.0.0.1:5/", None) == "http://127.0.0.1:5/"
    assert url_with_token("http://127.0.0.1:5/", "abc") == "http://127.0.0.1:5/?token=abc"
    assert url_with_token("http://h/?a=1", "t") == "http://h/?a=1&token=t"


def test_guard_refuses_to_run_unguarded():
    pytest.importorskip("trame_server", reason="the web extra is not installed")
    from trame.app import get_server

    server = get_server("lkseg_guard_unit", client_type="vue3")
    install_token_guard(server, None)  # no token: nothing installed
    assert not server.controller.on_server_bind.exists()
    install_token_guard(server, generate_token())
    assert server.controller.on_server_bind.exists()

    class TornadoLike:
        app = object()

    with pytest.raises(RuntimeError, match="not wslink's aiohttp backend"):
        server.controller.on_server_bind(TornadoLike())
    with pytest.raises(InputError, match="too short"):
        install_token_guard(server, "short")


# -- a running guarded trame server -----------------------------------------------------------------

GUARDED_APP = textwrap.dedent(
    """
    import sys
    from trame.app import get_server
    from trame.ui.html import DivLayout
    from trame.widgets import html
    from lkseg.web.security import install_origin_guard, install_token_guard

    token = sys.argv[1]
    server = get_server("guarded_probe", client_type="vue3")
    server.state.greeting = "guarded page content"
    with DivLayout(server) as layout:
        html.Div("{{ greeting }}", id="probe")
    install_token_guard(server, token)
    install_origin_guard(server, "127.0.0.1")

    @server.controller.add("on_server_ready")
    def _ready(**_):
        print(f"LKSEG-WEB-TOKEN {token}", flush=True)
        print(f"LKSEG-WEB-READY http://127.0.0.1:{server.port}/", flush=True)

    server.start(port=0, host="127.0.0.1", open_browser=False, show_connection_info=False, timeout=0)
    """
)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    pytest.importorskip("trame", reason="the web extra is not installed (pip install 'liverkidneyseg[web]')")
    import web_harness

    script = tmp_path_factory.mktemp("guarded") / "guarded_app.py"
    script.write_text(GUARDED_APP)
    token = generate_token()
    server = web_harness.start_server_process([sys.executable, str(script), token], timeout=60)
    assert server.token == token  # the harness found the token line and put it in the URL
    yield server
    server.stop()


def _get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8", "replace"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace"), dict(err.headers)


def test_http_without_or_with_a_wrong_token_is_403(guarded):
    base = guarded.base_url
    for url in (base, base + "index.html", base + "js/trame.umd.js", base + "does/not/exist"):
        status, body, headers = _get(url)
        assert status == 403, url
        assert "access token" in body and headers["Content-Type"].startswith("text/plain")
        assert COOKIE_NAME not in headers.get("Set-Cookie", "")
    wrong = generate_token()
    assert _get(url_with_token(base + "index.html", wrong))[0] == 403
    assert _get(base + "index.html", {HEADER_NAME: wrong})[0] == 403
    assert _get(base + "index.html", {"Cookie": f"{COOKIE_NAME}={wrong}"})[0] == 403
    assert _get(url_with_token(base + "index.html", guarded.token[:-1]))[0] == 403


def test_http_with_the_token_is_200_and_sets_the_cookie(guarded):
    base = guarded.base_url
    status, body, headers = _get(guarded.url)  # "/" redirects to index.html keeping the query
    assert status == 200 and "<html" in body.lower()
    cookie = headers.get("Set-Cookie", "")
    assert f"{COOKIE_NAME}={guarded.token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert _get(base + "index.html", {HEADER_NAME: guarded.token})[0] == 200
    status, _, headers = _get(base + "index.html", {"Cookie": f"{COOKIE_NAME}={guarded.token}"})
    assert status == 200 and "Set-Cookie" not in headers  # already had it


def test_websocket_needs_the_token(guarded):
    import aiohttp

    ws_url = f"ws://127.0.0.1:{guarded.port}/ws"

    async def attempt(**kwargs):
        async with aiohttp.ClientSession(**kwargs) as session:
            try:
                async with session.ws_connect(ws_url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as err:
                return err.status

    assert asyncio.run(attempt()) == 403
    assert asyncio.run(attempt(headers={HEADER_NAME: generate_token()})) == 403
    assert asyncio.run(attempt(cookies={COOKIE_NAME: generate_token()})) == 403
    assert asyncio.run(attempt(headers={HEADER_NAME: guarded.token})) == 101
    assert asyncio.run(attempt(cookies={COOKIE_NAME: guarded.token})) == 101


def test_other_sites_and_rebound_host_names_are_refused(guarded):
    """Even with the token: a Host that is not a loopback name (DNS rebinding) and a request from
    another site's page (Origin header of another origin, e.g. a websocket opened by evil.example)
    are refused; the server's own origin passes."""
    import aiohttp

    own = f"127.0.0.1:{guarded.port}"
    auth = {HEADER_NAME: guarded.token}
    assert _get(guarded.base_url + "index.html", {**auth, "Host": f"evil.example:{guarded.port}"})[0] == 403
    assert _get(guarded.base_url + "index.html", {**auth, "Host": f"localhost:{guarded.port}"})[0] == 200
    status, body, _ = _get(guarded.base_url + "index.html", {**auth, "Origin": "http://evil.example"})
    assert status == 403 and "evil.example" in body
    assert _get(guarded.base_url + "index.html", {**auth, "Origin": f"http://{own}"})[0] == 200
    assert _get(guarded.base_url + "index.html", {**auth, "Origin": "null"})[0] == 403

    async def ws(origin):
        headers = {**auth, **({"Origin": origin} if origin else {})}
        async with aiohttp.ClientSession(headers=headers) as session:
            try:
                async with session.ws_connect(f"ws://{own}/ws") as sock:
                    await sock.close()
                    return 101
            except aiohttp.WSServerHandshakeError as err:
                return err.status

    assert asyncio.run(ws("http://evil.example")) == 403
    assert asyncio.run(ws(f"http://127.0.0.1:{guarded.port + 1}")) == 403  # another local server's page
    assert asyncio.run(ws(f"http://{own}")) == 101
    assert asyncio.run(ws(None)) == 101  # not a browser page


@pytest.mark.parametrize(
    ("netloc", "host"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:80", "::1"),
        ("evil.example:1", "evil.example"),
    ],
)
def test_host_of(netloc, host):
    assert security._host_of(netloc) == host


def test_chromium_sees_403_without_and_the_app_with_the_token(guarded):
    import web_harness

    why = web_harness.browser_missing()
    if why:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def probe_text(driver):
        found = driver.find_elements(By.ID, "probe")
        return found[0].text if found else ""

    driver = web_harness.chrome(width=800, height=600)
    try:
        driver.get(guarded.base_url)
        assert "access token" in driver.find_element(By.TAG_NAME, "body").text
        assert probe_text(driver) == ""
        driver.get(guarded.url)
        # the text comes through the websocket: it passed the guard with the cookie
        WebDriverWait(driver, 30).until(lambda d: probe_text(d) == "guarded page content")
        web_harness.save_screenshot(driver, "security_with_token")
        driver.get(guarded.base_url)  # later visits: the cookie is enough
        WebDriverWait(driver, 30).until(lambda d: probe_text(d) == "guarded page content")
    finally:
        driver.quit()
