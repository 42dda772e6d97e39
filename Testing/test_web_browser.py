"""The web front end in a real browser (headless Debian Chromium through Selenium).

One flow, as a person would use the page, on a small generated phantom (exact labels = the
independent truth): open -> automatic segmentation (U-Net mode) -> a box drawn on the liver lesion
the automatic result covers worst -> two positive clicks on the same (cached) slice -> undo ->
resection plane placed and moved, height/weight typed -> the FLR / FLR% / sFLR shown on the page
are compared with ``lkseg plan`` (the CLI) run on the segmentation downloaded from the page.

Every step is screenshotted into ``Testing/artifacts/web/``. Printed numbers: page-interactive
time after ``lkseg web`` started (< 5 s target), the cached-slice click round trip measured in the
browser (pointer release -> the page shows the edit; < 300 ms target), the load average.

Skips with the reason when chromium/chromedriver, selenium or trame-slicer are missing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import web_harness as wh

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# seed 2, five liver tumours, arterial phase: the U-Net misses a 175-voxel lesion entirely (recall 0)
PHANTOM_ARGS = ("--seed", "2", "--liver-tumors", "5", "--phase", "arterial")
HEIGHT_CM, WEIGHT_KG = 172.0, 68.0


if wh.web_missing():
    pytest.skip(wh.web_missing(), allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from web_page import Page  # noqa: E402


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "n/a"


def _mask(seg, name: str) -> np.ndarray:
    return seg.mask(name) if name in seg else np.zeros(seg.grid.shape, bool)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from lkseg.io import read_label_map

    out = tmp_path_factory.mktemp("web-phantom")
    wh.small_phantom(out, *PHANTOM_ARGS)
    labels = read_label_map(out / "labels.nii.gz")
    return out, labels


def test_browser_flow(phantom, tmp_path):
    from scipy import ndimage

    folder, truthLabels = phantom
    truth = np.asarray(truthLabels.array)
    grid = truthLabels.grid
    t0 = time.monotonic()
    server = wh.start_web_server(
        [str(folder / "ct.nii.gz"), "--data-root", str(folder), "--work-dir", str(tmp_path / "work")],
        env={"LKSEG_AUTO_MODE": "unet", "OMP_NUM_THREADS": "2"},
    )
    driver = wh.chrome(1500, 950)
    page = Page(driver, server, tmp_path)
    try:
        # -- page interactive ---------------------------------------------------------------------
        driver.get(server.url)
        WebDriverWait(driver, 60, 0.05).until(
            lambda d: d.execute_script(
                "return !!(window.trame && window.trame.state && window.trame.state.get('lks_busy') === false"
                " && document.getElementById('lks-open'));"
            )
        )
        interactive_s = time.monotonic() - t0
        WebDriverWait(driver, 60, 0.05).until(lambda _: page.enabled("lks-segment"))
        ct_shown_s = time.monotonic() - t0
        print(
            f"\npage interactive {interactive_s:.2f} s after 'lkseg web' started (target < 5 s; HTTP ready "
            f"{server.started_to_ready_s:.2f} s), CT shown {ct_shown_s:.2f} s; load average {_loadavg()}"
        )
        assert interactive_s < 30, "the page took far too long to become interactive"
        assert "ct" in page.el("lks-case").text
        page.shot("1-open")

        # -- automatic segmentation (U-Net) ------------------------------------------------------
        seq = page.message()[0]
        page.el("lks-segment").click()
        WebDriverWait(driver, 20).until(lambda d: page.el("lks-progress").is_displayed())
        text = page.wait_message(seq, timeout=280)
        assert "automatic segmentation done" in text, text
        page.shot("2-auto")
        rows = page.js("return [...document.querySelectorAll('#lks-segments tbody tr')].map(r => r.dataset.name)")
        assert any("liver" in r.lower() for r in rows), rows
        _, auto = page.download_segmentation("auto.seg.nrrd")
        autoTumour = _mask(auto, "liver_tumor")

        # the colour picker of a segment row reaches the segmentation (the table is re-read from it)
        name = next(r for r in rows if "liver" in r.lower() and "tum" not in r.lower())
        page.js(
            "const i = document.querySelector(`#lks-segments tr[data-name='${arguments[0]}'] input[type=color]`);"
            "i.value = '#12ab34'; i.dispatchEvent(new Event('change', {bubbles: true}));",
            name,
        )
        WebDriverWait(driver, 20, 0.05).until(
            lambda _: (
                page.js("return window.trame.state.get('lks_segments').find(s => s.name === arguments[0]).color;", name)
                == "#12ab34"
            )
        )
        # DICOM SEG needs a CT read from DICOM: this one is a NIfTI file -> a clear message, nothing written
        seq = page.message()[0]
        page.el("lks-export-dicomseg").click()
        WebDriverWait(driver, 20, 0.05).until(lambda _: page.message()[0] > seq)
        assert "DICOM folder" in page.message()[1], page.message()

        # the liver lesion (exact phantom labels) the automatic result covers worst, on its largest slice
        lesions, n = ndimage.label(truth == 2)
        assert n >= 1
        recalls = [(autoTumour[lesions == i].mean(), i) for i in range(1, n + 1) if (lesions == i).sum() >= 50]
        recall, worst = min(recalls)
        lesion = lesions == worst
        k = int(np.argmax(lesion.sum(axis=(1, 2))))
        jj, ii = np.nonzero(lesion[k])
        print(f"lesion {worst}/{n}: {int(lesion.sum())} voxels, automatic recall {recall:.2f}; box on k={k}")

        def ras(i, j, kk=k):
            return (grid.ijk_to_ras @ np.array([i, j, kk, 1.0]))[:3]

        # 3D truth around this lesion: the other lesions (dilated) are left out of the comparison
        others = ndimage.binary_dilation((truth == 2) & ~lesion, iterations=2)

        def lesion3d(seg) -> tuple[float, float]:
            """(3D Dice, 3D recall) of liver_tumor vs the lesion's exact labels, other lesions left out."""
            m = _mask(seg, "liver_tumor") & ~others
            return 2 * (m & lesion).sum() / (m.sum() + lesion.sum()), m[lesion].mean()

        center = ras(ii.mean(), jj.mean())
        geometry = page.trigger("lks_jump", [float(v) for v in center])
        assert page.el("lks-3d").is_selected(), "3D is not on by default"
        assert page.disabled("lks-mode"), "the add/subtract/replace mode is selectable in 3D"

        def timed(action) -> tuple[float, float]:
            """Browser round trip (pointer release -> the page shows the edit) and the server's part, ms."""
            page.js(
                "window.__lks = {}; document.addEventListener('pointerup', () => { window.__lks.up = performance.now(); },"
                " {capture: true, once: true});"
                "new MutationObserver((m, o) => { window.__lks.edit = performance.now(); o.disconnect(); })"
                ".observe(document.getElementById('lks-last-edit'), {attributes: true, childList: true, subtree: true,"
                " characterData: true});"
            )
            edits = page.edits()
            action()
            page.wait_edits(edits + 1, timeout=400)  # a 3D box on a 2-core CI machine: tens of seconds
            page.idle()
            times = page.js("return window.__lks;")
            state = page.js(
                "const s = window.trame.state; return [s.get('lks_last_edit_s'), s.get('lks_last_edit_at')];"
            )
            # the click reached the server (same machine's clock) this long after the pointer was released
            timed.to_server = 1000 * state[1] - (page.js("return performance.timeOrigin;") + times["up"])
            return times["edit"] - times["up"], 1000 * state[0]

        # -- 3D box on the missed lesion in the axial view: segments it and follows it through its slices ------
        page.el("lks-tool-box").click()
        corner0 = page.ras_to_page("Red", ras(ii.min() - 1.0, jj.min() - 1.0), geometry)
        corner1 = page.ras_to_page("Red", ras(ii.max() + 1.0, jj.max() + 1.0), geometry)
        box_ms, _ = timed(lambda: page.drag(corner0, corner1))
        page.shot("3-box")
        _, boxed = page.download_segmentation("box.seg.nrrd")
        boxMask = _mask(boxed, "liver_tumor")
        dice0, recall0 = lesion3d(auto)
        dice1, recall1 = lesion3d(boxed)
        slices = [z for z in np.nonzero(lesion.any(axis=(1, 2)))[0] if z != k]
        print(
            f"3D box ({box_ms / 1000:.1f} s): lesion 3D Dice {dice0:.2f} -> {dice1:.2f}, 3D recall {recall0:.2f} -> "
            f"{recall1:.2f}, recall on its slice {autoTumour[k][lesion[k]].mean():.2f} -> {boxMask[k][lesion[k]].mean():.2f}"
            f"; lesion on other slices {[round(float(boxMask[z][lesion[z]].mean()), 2) for z in slices]}"
        )
        assert recall0 < 0.3, f"no missed lesion to correct (worst automatic recall {recall0:.2f})"
        # the lesion is nearly isodense in the arterial phase: the prompt model finds part of it
        assert recall1 >= recall0 + 0.3 and dice1 > dice0, (dice0, dice1, recall0, recall1)
        assert any(boxMask[z][lesion[z]].any() for z in slices), "the 3D box did not reach the lesion's other slices"
        # only the edited segment is written (the liver is left out: in the downloaded label map a
        # voxel holds one structure, and the tumour's new voxels lie in the liver)
        for name in ("kidney_right", "kidney_left", "spleen"):
            assert np.array_equal(_mask(boxed, name), _mask(auto, name)), name

        # -- 3D clicks, each on the central slice of the largest 3D error: what the box leaked, then missed -----
        def error_click(seg, missed: bool):
            m = _mask(seg, "liver_tumor") & ~others
            error = (lesion & ~m) if missed else (m & ~lesion & ~autoTumour)  # (not the automatic result's own)
            parts, count = ndimage.label(error)
            if count == 0:
                return None
            part = parts == 1 + int(np.argmax(ndimage.sum(error, parts, range(1, count + 1))))
            z = int(np.median(np.nonzero(part)[0]))
            depth = ndimage.distance_transform_edt(np.pad(part[z], 1))[1:-1, 1:-1]
            j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
            return z, int(j), int(i)

        def click3d(seg, missed: bool, name: str):
            target = error_click(seg, missed)
            assert target is not None, f"no {'missed' if missed else 'leaked'} voxels left to click"
            z, j, i = target
            geo = page.trigger("lks_jump", [float(v) for v in ras(i, j, z)])
            page.el("lks-tool-positive" if missed else "lks-tool-negative").click()
            ms, server_ms = timed(lambda: page.click_at(page.ras_to_page("Red", ras(i, j, z), geo)))
            _, after = page.download_segmentation(f"{name}.seg.nrrd")
            return (z, j, i), ms, server_ms, after

        def leaked(seg) -> list[int]:
            """Voxels per slice that the corrections added outside the lesion (not the automatic result's)."""
            return (_mask(seg, "liver_tumor") & ~others & ~lesion & ~autoTumour).sum(axis=(1, 2)).tolist()

        (z, j, i), ms, server_ms, minus = click3d(boxed, False, "minus")
        dice2, recall2 = lesion3d(minus)
        print(
            f"3D negative click at k={z} ({ms:.0f} ms in the browser, {server_ms:.0f} ms on the server; load average "
            f"{_loadavg()}): lesion 3D Dice {dice1:.2f} -> {dice2:.2f}, 3D recall {recall1:.2f} -> {recall2:.2f}; "
            f"leaked voxels per slice {leaked(boxed)} -> {leaked(minus)}"
        )
        page.shot("4-click")
        assert not _mask(minus, "liver_tumor")[z, j, i], "the clicked voxel is still in the segment"
        assert (_mask(minus, "liver_tumor") <= _mask(boxed, "liver_tumor")).all(), "a negative click added voxels"
        assert dice2 > dice1, "the negative click on the leak did not improve the lesion"
        (z, j, i), ms, server_ms, plus = click3d(minus, True, "plus")
        dice3, recall3 = lesion3d(plus)
        print(
            f"3D positive click at k={z} ({ms:.0f} ms in the browser, {server_ms:.0f} ms on the server; load average "
            f"{_loadavg()}): lesion 3D Dice {dice2:.2f} -> {dice3:.2f}, 3D recall {recall2:.2f} -> {recall3:.2f}"
        )
        assert _mask(plus, "liver_tumor")[z, j, i], "the clicked voxel is not in the segment"
        assert recall3 > recall2, "a positive click on missed lesion voxels added none"

        # -- a 3D box that propagates shows progress and can be cancelled: nothing changes -----------------
        other = max(range(1, n + 1), key=lambda c: (lesions == c).sum() if c != worst else -1)
        zo = int(np.argmax((lesions == other).sum(axis=(1, 2))))
        jo, io = np.nonzero(lesions[zo] == other)
        geo = page.trigger("lks_jump", [float(v) for v in ras(io.mean(), jo.mean(), zo)])
        page.el("lks-tool-box").click()
        seq = page.message()[0]
        page.drag(
            page.ras_to_page("Red", ras(io.min() - 1.0, jo.min() - 1.0, zo), geo),
            page.ras_to_page("Red", ras(io.max() + 1.0, jo.max() + 1.0, zo), geo),
        )
        WebDriverWait(driver, 60, 0.05).until(lambda _: page.el("lks-cancel").is_displayed())
        assert page.el("lks-progress").is_displayed()
        t_cancel = time.monotonic()
        page.el("lks-cancel").click()
        text = page.wait_message(seq, timeout=120)
        page.idle()
        print(f"3D box on lesion {other} (k={zo}) cancelled in {time.monotonic() - t_cancel:.1f} s: {text!r}")
        assert "cancel" in text.lower(), text
        _, cancelled = page.download_segmentation("cancelled.seg.nrrd")
        assert np.array_equal(_mask(cancelled, "liver_tumor"), _mask(plus, "liver_tumor")), "a cancelled edit changed"

        # -- undo / redo: one step per action ------------------------------------------------------------
        for button, expected in (("lks-undo", minus), ("lks-redo", plus), ("lks-undo", minus)):
            edits = page.edits()
            page.el(button).click()
            page.wait_edits(edits + 1)
            _, state = page.download_segmentation(f"{button}.seg.nrrd")
            for name in ("liver_tumor", "liver"):
                assert np.array_equal(_mask(state, name), _mask(expected, name)), (button, name)
        page.shot("5-undo")

        # -- 3D off: one slice, box then clicks on the same (cached) slice: browser-measured round trips ------
        page.el("lks-3d").click()
        WebDriverWait(driver, 10, 0.05).until(lambda _: page.js("return window.trame.state.get('lks_3d')") is False)
        assert not page.disabled("lks-mode")
        geometry = page.trigger("lks_jump", [float(v) for v in center])
        page.el("lks-tool-box").click()
        box2d_ms, _ = timed(lambda: page.drag(corner0, corner1))
        _, boxed2d = page.download_segmentation("box2d.seg.nrrd")
        page.el("lks-tool-positive").click()
        for n, point in enumerate((center, ras(ii.mean() + 1.0, jj.mean()))):
            click_ms, server_ms = timed(lambda p=point: page.click_at(page.ras_to_page("Red", p, geometry)))
            print(
                f"cached-slice click {n + 1} (3D off) round trip in the browser: {click_ms:.0f} ms (target < 300 ms), "
                f"of which {server_ms:.0f} ms prediction + edit on the server, {click_ms - server_ms:.0f} ms "
                f"page/network ({timed.to_server:.0f} ms pointer release -> the click on the server, "
                f"{click_ms - server_ms - timed.to_server:.0f} ms edit done -> shown); load average {_loadavg()} "
                f"(one-slice box before: {box2d_ms:.0f} ms)"
            )
            if n == 0:
                _, clicked = page.download_segmentation("click.seg.nrrd")
        assert click_ms < 4000, "a click on a cached slice took seconds (prompt-model prefetch competing for the CPU?)"
        sliceBox = _mask(boxed2d, "liver_tumor")[k][lesion[k]].mean()
        sliceClick = _mask(clicked, "liver_tumor")[k][lesion[k]].mean()
        print(f"one-slice positive click after a box: lesion recall on its slice {sliceBox:.2f} -> {sliceClick:.2f}")
        ci, cj = (round(v) for v in (ii.mean(), jj.mean()))
        assert _mask(clicked, "liver_tumor")[k, cj, ci], "the clicked voxel is not in the segment"
        # the click re-predicts the slice from the box AND the point (as the Slicer module does)
        assert sliceClick >= sliceBox - 0.02, "the click took back what the box had added"
        others_k = [z for z in range(truth.shape[0]) if z != k]  # one slice: nothing else changes
        assert np.array_equal(_mask(clicked, "liver_tumor")[others_k], _mask(boxed2d, "liver_tumor")[others_k])
        page.el("lks-tool-navigate").click()

        # -- resection plane: placed, moved, height/weight ------------------------------------------
        seq_plan = lambda: int(page.js("return window.trame.state.get('lks_plan_seq')"))  # noqa: E731
        planned = seq_plan()
        page.el("lks-plan").click()
        WebDriverWait(driver, 120, 0.1).until(lambda _: seq_plan() > planned)
        first = json.loads(page.el("lks-flr").get_attribute("data-flr"))
        for id_, value in (("lks-height", HEIGHT_CM), ("lks-weight", WEIGHT_KG)):
            box = page.el(id_)
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(str(value))
        thumb = driver.find_element(By.CSS_SELECTOR, "#lks-plane-offset .v-slider-thumb")
        ActionChains(driver).move_to_element(thumb).click().perform()
        for _ in range(15):
            thumb.send_keys(Keys.ARROW_RIGHT)
        WebDriverWait(driver, 30, 0.1).until(
            lambda _: page.js("return window.trame.state.get('lks_plane_offset')") == 15
        )
        WebDriverWait(driver, 120, 0.1).until(
            lambda _: page.js(
                "const s = window.trame.state; const f = s.get('lks_flr');"
                "return !s.get('lks_busy') && f && f.sflr_percent != null"
                " && JSON.stringify(f.plane) === JSON.stringify(s.get('lks_plane'));"
            )
        )
        flr = json.loads(page.el("lks-flr").get_attribute("data-flr"))
        assert flr["plane"]["origin"] != first["plane"]["origin"], "the plane did not move"
        assert flr["sflr_percent"] is not None, flr
        page.shot("6-plan")
        segPath, _ = page.download_segmentation("plan.seg.nrrd")

        # -- independent truth: lkseg plan on the same masks and the plane shown -------------------------
        origin, normal = flr["plane"]["origin"], flr["plane"]["normal"]
        out = tmp_path / "plan"
        cli = wh.run_lkseg(
            "plan",
            str(segPath),
            "-o",
            str(out),
            "--plane",
            f"{','.join(map(str, origin))}:{','.join(map(str, normal))}",
            "--height-cm",
            str(HEIGHT_CM),
            "--weight-kg",
            str(WEIGHT_KG),
            "--no-surfaces",
            "--no-render",
            "--json",
        )
        summary = json.loads(cli.stdout)
        cliFlr = summary["summary"]["flr"]
        print(
            f"FLR page {flr['flr_ml']:.1f} mL / {flr['flr_percent']:.1f} % / sFLR {flr['sflr_percent']:.1f} %; "
            f"lkseg plan {cliFlr['flr_ml']:.1f} mL / {cliFlr['flr_percent']:.1f} % / sFLR {cliFlr['sflr_percent']:.1f} %"
        )
        assert flr["flr_ml"] == pytest.approx(cliFlr["flr_ml"], abs=0.06)
        assert flr["flr_percent"] == pytest.approx(cliFlr["flr_percent"], abs=0.06)
        assert flr["sflr_percent"] == pytest.approx(cliFlr["sflr_percent"], abs=0.06)
        assert flr["verdict"] == cliFlr["verdict"]
        assert server.alive()
        print(
            f"browser flow {time.monotonic() - t0:.0f} s; load average {_loadavg()}; chromium {wh.chromium_version()}"
        )
    finally:
        driver.quit()
        server.stop()
        if os.environ.get("LKSEG_WEB_TEST_LOG"):
            print(server.output[-8000:])


def test_browser_bad_input(phantom, tmp_path):
    """Bad input gives a clear message on the page; the server keeps running and the open case stays."""
    import shutil

    folder, _ = phantom
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(folder / "ct.nii.gz", data / "ct.nii.gz")
    (data / "notes.txt").write_text("not an image\n")
    (data / "corrupt.nii.gz").write_bytes((folder / "ct.nii.gz").read_bytes()[:5000])
    for seed in ("3", "4"):  # two DICOM series in one folder
        out = tmp_path / f"dicom{seed}"
        wh.run_lkseg(
            "phantom", "--size", "48", "48", "12", "--spacing", "7", "7", "15", "--seed", seed, "--dicom", str(out)
        )
        shutil.copytree(out / "dicom", data / "twoseries" / seed)
    server = wh.start_web_server(
        [str(data / "ct.nii.gz"), "--data-root", str(data), "--work-dir", str(tmp_path / "work")],
        env={"LKSEG_AUTO_MODE": "unet", "OMP_NUM_THREADS": "2"},
    )
    driver = wh.chrome(1500, 950)
    page = Page(driver, server, tmp_path)

    def expect(action, words: str, kind: str = "error") -> str:
        seq = page.message()[0]
        action()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            new, text, cls = page.message()
            if new > seq:
                assert f"bg-{kind}" in cls, (text, cls)
                assert words.lower() in text.lower(), text
                assert str(tmp_path) not in text, f"the page shows a server path: {text}"
                print(f"{kind}: {text}")
                return text
            time.sleep(0.1)
        raise AssertionError(f"no message for {words!r}")

    def open_path(relative: str):
        box = page.el("lks-path")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(relative)
        page.el("lks-open").click()

    try:
        driver.get(server.url)
        WebDriverWait(driver, 60, 0.05).until(lambda _: page.enabled("lks-segment"))
        assert not page.el("lks-other-tab").is_displayed()
        # single-user rule: a second tab on the same server is warned (and so is the first)
        first = driver.current_window_handle
        driver.switch_to.new_window("tab")
        driver.get(server.url)
        WebDriverWait(driver, 60, 0.1).until(lambda d: page.el("lks-other-tab").is_displayed())
        assert page.el("lks-case").text == "ct"  # the same session
        driver.close()
        driver.switch_to.window(first)
        WebDriverWait(driver, 30, 0.1).until(lambda d: not page.el("lks-other-tab").is_displayed())
        expect(lambda: open_path("notes.txt"), "notes.txt")
        expect(lambda: open_path("corrupt.nii.gz"), "corrupt")
        expect(lambda: open_path("../"), "outside")
        assert page.el("lks-case").text == "ct" and server.alive()
        upload = driver.find_element(By.CSS_SELECTOR, "#lks-upload input[type=file], input[type=file]")
        expect(lambda: upload.send_keys(str(data / "notes.txt")), "notes")
        page.shot("bad-1-messages")
        # several series: a picker, then the chosen one opens
        expect(lambda: open_path("twoseries"), "2 series", kind="info")
        ActionChains(driver).move_to_element(page.el("lks-series")).click().perform()
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item"))
        time.sleep(0.5)  # the menu's opening transition
        item = driver.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item")[1]
        expect(lambda: ActionChains(driver).move_to_element(item).click().perform(), "opened", "success")
        # a click outside the image
        page.el("lks-tool-positive").click()
        rect = page.js(
            "const r = document.getElementById('lks-view-Red').parentElement.getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];"
        )
        expect(lambda: page.click_at((rect[0] + 40, rect[1] + 30)), "outside")
        # a second job while one runs, then cancel
        page.el("lks-segment").click()
        WebDriverWait(driver, 20).until(lambda d: page.el("lks-cancel").is_displayed())
        expect(lambda: page.click_at((rect[0] + rect[2] / 2, rect[1] + rect[3] / 2)), "still running")
        page.shot("bad-2-busy")
        t0 = time.monotonic()
        expect(lambda: page.el("lks-cancel").click(), "cancel", kind="info")
        print(f"automatic segmentation cancelled in {time.monotonic() - t0:.1f} s")
        assert time.monotonic() - t0 < 10
        assert server.alive()
    finally:
        driver.quit()
        server.stop()
        if os.environ.get("LKSEG_WEB_TEST_LOG"):
            print(server.output[-8000:])
