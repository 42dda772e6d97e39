"""The browser-test harness itself: a throwaway trame app (written here, not the product app) is
started through :func:`web_harness.start_server_process` on 127.0.0.1, and headless Chromium
reads the text its page renders (which only appears once trame's client has connected over the
websocket and received the app's state)."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

pytest.importorskip("trame", reason="the web extra is not installed (pip install 'liverkidneyseg[web]')")

import web_harness

#: A minimal trame app: prints the harness's readiness line once listening; the page shows a
#: state value, so reading it proves the websocket round trip.
TINY_APP = textwrap.dedent(
    """
    import sys
    from trame.app import get_server
    from trame.ui.html import DivLayout
    from trame.widgets import html

    server = get_server("harness_probe", client_type="vue3")
    server.state.greeting = "harness says hello"
    PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value

    @server.trigger("get_payload")
    def get_payload():
        return server.protocol.addAttachment(PAYLOAD)

    with DivLayout(server) as layout:
        html.Div("{{ greeting }}", id="probe")
        html.Button(
            "download",
            id="download",
            click="utils.download('payload.bin', trigger('get_payload'), 'application/octet-stream')",
        )

    @server.controller.add("on_server_ready")
    def _ready(**_):
        print(f"LKSEG-WEB-READY http://127.0.0.1:{server.port}/", flush=True)

    server.start(port=0, host="127.0.0.1", open_browser=False, show_connection_info=False, timeout=0)
    """
)


@pytest.fixture
def tiny_server(tmp_path):
    script = tmp_path / "tiny_app.py"
    script.write_text(TINY_APP)
    server = web_harness.start_server_process([sys.executable, str(script)], timeout=60)
    yield server
    server.stop()


def test_server_ready_on_loopback_and_stopped(tiny_server):
    assert tiny_server.base_url.startswith("http://127.0.0.1:")
    assert tiny_server.port > 0 and tiny_server.token is None
    assert tiny_server.url == tiny_server.base_url
    assert web_harness._http_status(tiny_server.url) == 200
    print(f"tiny trame app: started to HTTP 200 in {tiny_server.started_to_ready_s:.2f} s")
    tiny_server.stop()
    assert not tiny_server.alive()


def test_start_failure_quotes_the_output(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("print('about to fail', flush=True)\nraise SystemExit(3)\n")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*about to fail"):
        web_harness.start_server_process([sys.executable, str(script)], timeout=30)


def test_chromium_reads_the_page(tiny_server):
    why = web_harness.browser_missing()
    if why:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.monotonic()
    driver = web_harness.chrome(width=800, height=600)
    startup_s = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        driver.get(tiny_server.url)
        WebDriverWait(driver, 30).until(
            lambda d: (
                "harness says hello" in (d.find_element(By.ID, "probe").text if d.find_elements(By.ID, "probe") else "")
            )
        )
        page_s = time.monotonic() - t1
        shot = web_harness.save_screenshot(driver, "harness probe")
        assert shot.name == "harness_probe.png" and shot.stat().st_size > 1000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        size = driver.get_window_size()
        assert (size["width"], size["height"]) == (800, 600)
    finally:
        driver.quit()
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"chromium start {startup_s:.2f} s, page rendered {page_s:.2f} s (load {' '.join(load)})")


def test_chromium_downloads_bytes_from_the_server(tiny_server, tmp_path):
    """The download path the app uses: a trigger returns the bytes as a wslink attachment and the
    trame client's ``utils.download`` saves them; the file arrives intact."""
    why = web_harness.browser_missing()
    if why:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    driver = web_harness.chrome(width=800, height=600, download_dir=downloads)
    try:
        driver.get(tiny_server.url)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "download"))
        WebDriverWait(driver, 30).until(lambda d: "harness says hello" in d.find_element(By.ID, "probe").text)
        driver.find_element(By.ID, "download").click()
        path = web_harness.wait_for_download(downloads, "payload.bin", timeout=30)
    finally:
        driver.quit()
    assert path.read_bytes() == bytes(range(256)) * 4096


def test_start_web_server_runs_lkseg_web_on_port_0(monkeypatch):
    calls = []
    monkeypatch.setattr(
        web_harness, "start_server_process", lambda cmd, env=None, timeout=60: calls.append((cmd, env, timeout))
    )
    web_harness.start_web_server(["ct.nii.gz", "--data", "/data"], env={"A": "1"}, timeout=12)
    cmd, env, timeout = calls[0]
    assert cmd == [sys.executable, "-m", "lkseg", "web", "ct.nii.gz", "--data", "/data", "--port", "0"]
    assert (env, timeout) == ({"A": "1"}, 12)
    merged = web_harness.subprocess_env({"A": "1"})
    assert merged["PYTHONPATH"].split(os.pathsep)[0] == str(web_harness.ROOT / "LiverKidneySeg")
    assert merged["A"] == "1" and merged["TRAME_SERVER"] == "1"


def test_no_ready_line_times_out_with_the_output(tmp_path):
    script = tmp_path / "silent.py"
    script.write_text("import time\nprint('booting', flush=True)\ntime.sleep(60)\n")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)no LKSEG-WEB-READY line within 2 s.*booting"):
        web_harness.start_server_process([sys.executable, str(script)], timeout=2)
    assert time.monotonic() - t0 < 15  # and the process was stopped
