"""The page of the web front end in a browser, as the browser tests read and drive it (not a test file).

:class:`Page` wraps a Selenium driver on the app's page: element reads by the ids and ``data-*``
attributes of :mod:`lkseg.web.ui`, page messages, edits, trame triggers, RAS -> page pixel mapping
(from the ``lks_view_geometry`` / ``lks_jump`` triggers: each slice view's ``XYToRAS``), mouse drags
and clicks, and downloads read back with the core's readers.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import web_harness as wh
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["Page"]


class Page:
    """The page in the browser, with the few reads/actions the flow needs."""

    def __init__(self, driver, server, workDir: Path):
        self.d, self.server, self.workDir = driver, server, workDir

    def el(self, id_: str):
        return self.d.find_element(By.ID, id_)

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def trigger(self, name: str, *args):
        return self.d.execute_async_script(
            "const cb = arguments[arguments.length - 1];"
            "window.trame.trigger(arguments[0], arguments[1]).then(cb, (e) => cb({error: String(e)}));",
            name,
            list(args),
        )

    def message(self) -> tuple[int, str, str]:
        return self.js(
            "const e = document.getElementById('lks-message');"
            "return e ? [Number(e.getAttribute('data-seq')), e.innerText, e.className] : [0, '', ''];"
        )

    def wait_message(self, after_seq: int, timeout: float = 240) -> str:
        """Wait for a page message newer than ``after_seq``; fails on an error message."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seq, text, cls = self.message()
            if seq > after_seq:
                assert "bg-error" not in cls and "error" not in cls.split(), f"page error: {text}"
                return text
            time.sleep(0.2)
        raise AssertionError(f"no page message within {timeout} s (last: {self.message()})")

    def enabled(self, id_: str) -> bool:
        """Whether the element ``id_`` exists and is not disabled (read in the page: no element
        reference goes stale while the layout is re-rendered, e.g. when the views appear)."""
        return self.js("const e = document.getElementById(arguments[0]); return !!e && !e.disabled;", id_)

    def disabled(self, id_: str) -> bool:
        """Whether the Vuetify input whose inner element has ``id_`` is disabled."""
        return self.js(
            "const e = document.getElementById(arguments[0]); const i = e.closest('.v-input');"
            "return e.disabled || (!!i && i.classList.contains('v-input--disabled'));",
            id_,
        )

    def edits(self) -> int:
        return int(self.el("lks-last-edit").get_attribute("data-edits"))

    def wait_edits(self, count: int, timeout: float = 120) -> None:
        WebDriverWait(self.d, timeout, 0.05).until(lambda _: self.edits() >= count)

    def idle(self, timeout: float = 240) -> None:
        WebDriverWait(self.d, timeout, 0.1).until(lambda _: not self.el("lks-cancel").is_displayed())

    def shot(self, name: str) -> Path:
        time.sleep(0.6)  # the views' last image reaches the page
        return wh.save_screenshot(self.d, f"web-{name}")

    # -- views -------------------------------------------------------------------------------------
    def ras_to_page(self, view: str, ras, geometry: dict) -> tuple[float, float]:
        g = geometry[view]
        xy = np.linalg.inv(np.asarray(g["xy_to_ras"]).reshape(4, 4)) @ np.r_[np.asarray(ras, float), 1.0]
        rect = self.js(
            "const r = document.getElementById('lks-view-' + arguments[0]).parentElement.getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];",
            view,
        )
        w, h = g["size"]
        return rect[0] + xy[0] * rect[2] / w, rect[1] + rect[3] - xy[1] * rect[3] / h

    def drag(self, p0, p1, steps: int = 6) -> None:
        ab = ActionBuilder(self.d)
        ab.pointer_action.move_to_location(round(p0[0]), round(p0[1])).pointer_down()
        for t in np.linspace(0, 1, steps + 1)[1:]:
            ab.pointer_action.pause(0.05)
            ab.pointer_action.move_to_location(round(p0[0] + t * (p1[0] - p0[0])), round(p0[1] + t * (p1[1] - p0[1])))
        ab.pointer_action.pause(0.05).pointer_up()
        ab.perform()

    def click_at(self, p) -> None:
        ab = ActionBuilder(self.d)
        ab.pointer_action.move_to_location(round(p[0]), round(p[1])).pointer_down().pause(0.05).pointer_up()
        ab.perform()

    # -- downloads ----------------------------------------------------------------------------------
    def download_segmentation(self, name: str):
        """Export the .seg.nrrd on the page, fetch it over HTTP, read it with the core reader."""
        from lkseg.io import read_seg_nrrd

        seq = self.message()[0]
        self.el("lks-export-segnrrd").click()
        text = self.wait_message(seq)
        assert ".seg.nrrd" in text, text
        href = self.js(
            "return [...document.querySelectorAll('#lks-downloads a')].map(a => a.href)"
            ".find(h => h.endsWith('.seg.nrrd'));"
        )
        path = self.workDir / name
        with urllib.request.urlopen(href, timeout=30) as resp:
            path.write_bytes(resp.read())
        return path, read_seg_nrrd(path)
