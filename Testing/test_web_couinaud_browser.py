"""Segment-based (Couinaud) planning in a real browser (headless Debian Chromium through Selenium).

A person's flow on a generated phantom: open the CT, open its masks (``labels.seg.nrrd``) and an
exact landmarks file (``lkseg.phantom.couinaud.exact_landmarks``) from the data folder, choose
"Right hepatectomy" in the preset picker, plan: the FLR shown on the page equals ``lkseg plan
--resect right_hepatectomy --landmarks ...`` run as a separate process on the same files, and the
per-segment volumes equal the CLI's; the landmarks downloaded from the page are the file's. Then the portal bifurcation is placed again by a click in the
axial view (landmark tool): the point lands where clicked and the plan is redone.

Screenshots go to ``Testing/artifacts/web/``. Skips with the reason when chromium/chromedriver,
selenium or trame-slicer are missing.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import web_harness as wh

pytestmark = [pytest.mark.slow]


if wh.web_missing():
    pytest.skip(wh.web_missing(), allow_module_level=True)

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "n/a"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lkseg.phantom import PhantomConfig, generate_phantom, write_phantom
    from lkseg.phantom.couinaud import exact_landmarks

    out = tmp_path_factory.mktemp("web-couinaud-data")
    ph = generate_phantom(PhantomConfig(seed=6, size_ijk=(128, 128, 60), spacing=(3.2, 3.2, 4.2)))
    write_phantom(ph, out)
    landmarks = exact_landmarks(ph)
    landmarks.save(out / "landmarks.json")
    return out, landmarks


def test_browser_right_hepatectomy_by_segments(data, tmp_path):
    from lkseg.planning import CouinaudLandmarks

    folder, landmarks = data
    t0 = time.monotonic()
    server = wh.start_web_server(
        [str(folder / "ct.nii.gz"), "--data-root", str(folder), "--work-dir", str(tmp_path / "work")],
        env={"LKSEG_AUTO_MODE": "unet", "OMP_NUM_THREADS": "2"},
    )
    driver = wh.chrome(1500, 1100)

    def state(key: str):
        return driver.execute_script(
            "return window.trame && window.trame.state ? window.trame.state.get(arguments[0]) : null;", key
        )

    def message_seq() -> int:
        return int(state("lks_message_seq") or 0)

    def wait_message(after: int, words: str, timeout: float = 120) -> str:
        WebDriverWait(driver, timeout, 0.1).until(lambda _: message_seq() > after)
        text, kind = state("lks_message"), state("lks_message_type")
        assert kind != "error" and words in text, (kind, text)
        return text

    def type_into(id_: str, text: str) -> None:
        box = driver.find_element(By.ID, id_)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text)

    def file_input(id_: str):
        e = driver.find_element(By.ID, id_)
        return e if e.tag_name == "input" else e.find_element(By.CSS_SELECTOR, "input[type=file]")

    def shot(name: str) -> Path:
        time.sleep(0.6)
        return wh.save_screenshot(driver, f"web-couinaud-{name}")

    try:
        driver.get(server.url)
        WebDriverWait(
            driver, 90, 0.1, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        ).until(lambda d: state("lks_case") and d.find_element(By.ID, "lks-cou-open-seg").is_enabled())
        driver.execute_script("document.getElementById('lks-cou-card').scrollIntoView();")
        # -- masks and landmarks from the data folder ----------------------------------------------
        seq = message_seq()
        type_into("lks-cou-seg-path", "labels.seg.nrrd")
        driver.find_element(By.ID, "lks-cou-open-seg").click()
        print("\n" + wait_message(seq, "opened labels.seg.nrrd"))
        seq = message_seq()
        type_into("lks-cou-landmarks-path", "landmarks.json")
        driver.find_element(By.ID, "lks-cou-load").click()
        print(wait_message(seq, "landmarks loaded from landmarks.json"))
        count = int(driver.find_element(By.ID, "lks-cou-points-text").get_attribute("data-count"))
        veins = sum(len(landmarks.vein(k)) for k in ("right_hepatic_vein", "middle_hepatic_vein", "left_hepatic_vein"))
        assert count == len(landmarks.ivc) + 1 + veins
        # bad input: proposing without vessel segments, a file that is not a landmarks file
        for action, words in (
            (lambda: driver.find_element(By.ID, "lks-cou-propose").click(), "no hepatic_vein and portal_vein"),
            (
                lambda: file_input("lks-cou-upload").send_keys(str(folder / "phantom.json")),
                "phantom.json: Couinaud landmarks are missing",  # the upload's name, not the server's path
            ),
        ):
            seq = message_seq()
            action()
            WebDriverWait(driver, 30, 0.1).until(lambda _, seq=seq: message_seq() > seq)
            text = state("lks_message")
            print(f"error shown: {text}")
            assert state("lks_message_type") == "error" and words in text and str(tmp_path) not in text, text
        assert int(driver.find_element(By.ID, "lks-cou-points-text").get_attribute("data-count")) == count
        shot("0-bad-input")
        # -- the preset picker: right hepatectomy ---------------------------------------------------
        ActionChains(driver).move_to_element(driver.find_element(By.ID, "lks-cou-preset")).click().perform()
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item"))
        time.sleep(0.5)  # the menu's opening transition
        item = next(
            e
            for e in driver.find_elements(By.CSS_SELECTOR, ".v-overlay .v-list-item")
            if e.text.startswith("Right hepatectomy")
        )
        ActionChains(driver).move_to_element(item).click().perform()
        WebDriverWait(driver, 10, 0.1).until(lambda _: state("lks_cou_mode") == "segments")
        assert sorted(state("lks_cou_segments")) == [5, 6, 7, 8]
        checked = driver.execute_script(
            "return [...Array(8).keys()].map(i => { const e = document.getElementById('lks-cou-seg-' + (i + 1));"
            " return (e.tagName === 'INPUT' ? e : e.querySelector('input')).checked; });"
        )
        assert checked == [False] * 4 + [True] * 4, checked
        # -- plan --------------------------------------------------------------------------------------
        planned = int(state("lks_plan_seq"))
        t_plan = time.monotonic()
        driver.find_element(By.ID, "lks-cou-plan").click()
        WebDriverWait(driver, 120, 0.1).until(lambda _: int(state("lks_plan_seq")) > planned and not state("lks_busy"))
        plan_s = time.monotonic() - t_plan
        flr = json.loads(driver.find_element(By.ID, "lks-flr").get_attribute("data-flr"))
        page = json.loads(driver.find_element(By.ID, "lks-cou-result").get_attribute("data-plan"))
        summary = driver.find_element(By.ID, "lks-cou-summary").text
        driver.execute_script("document.getElementById('lks-cou-result').scrollIntoView({block: 'end'});")
        shot("1-right-hepatectomy")
        assert page["resection"] == {"kind": "segments", "segments": [5, 6, 7, 8]}, page["resection"]
        rows = driver.find_elements(By.CSS_SELECTOR, "#lks-cou-table tbody tr")
        assert [int(r.get_attribute("data-segment")) for r in rows] == list(range(1, 9))

        # -- independent truth: lkseg plan on the same masks and landmarks file --------------------------
        out = tmp_path / "cli"
        wh.run_lkseg(
            *("plan", str(folder / "labels.seg.nrrd"), "--image", str(folder / "ct.nii.gz"), "-o", str(out)),
            *("--resect", "right_hepatectomy", "--landmarks", str(folder / "landmarks.json")),
            *("--no-surfaces", "--no-render", "--reports", "json"),
        )
        cli = json.loads((out / "report.json").read_text())["result"]
        print(
            f"{summary}\npage FLR {flr['flr_ml']:.2f} mL / {flr['flr_percent']:.2f} %, lkseg plan "
            f"{cli['flr']['flr_ml']:.2f} mL / {cli['flr']['flr_percent']:.2f} %; plan on the page {plan_s:.1f} s "
            f"(click to result); load average {_loadavg()}"
        )
        assert flr["flr_percent"] == pytest.approx(cli["flr"]["flr_percent"], abs=0.006)  # page rounds to 0.01
        assert flr["flr_ml"] == pytest.approx(cli["flr"]["flr_ml"], abs=0.006)
        assert flr["verdict"] == cli["flr"]["verdict"]
        cliVolumes = {row["segment"]: row["volume_ml"] for row in cli["couinaud"]["segments"]}
        assert {r["segment"]: r["volume_ml"] for r in page["segments"]} == pytest.approx(cliVolumes, abs=1e-3)
        assert {r["lesion"] for r in page["lesions"]} == set(cli["couinaud"]["lesion_segments"])

        # -- download the landmarks used and the segments: they reproduce the plan ---------------------------
        seq = message_seq()
        driver.find_element(By.ID, "lks-cou-export").click()
        wait_message(seq, "ready to download")
        hrefs = driver.execute_script("return [...document.querySelectorAll('#lks-downloads a')].map(a => a.href);")
        href = next(h for h in hrefs if h.endswith("_couinaud_landmarks.json"))
        with urllib.request.urlopen(href, timeout=30) as resp:
            (tmp_path / "used.json").write_bytes(resp.read())
        used = CouinaudLandmarks.load(tmp_path / "used.json")
        assert np.allclose(used.vein("right_hepatic_vein"), landmarks.vein("right_hepatic_vein"), atol=1e-4)
        assert np.allclose(used.portal_bifurcation, landmarks.portal_bifurcation, atol=1e-4)
        assert any(h.endswith("_couinaud_segments.seg.nrrd") for h in hrefs), hrefs

        # -- the landmark tool: place PB again by a click in the axial view --------------------------------
        target = np.add(landmarks.portal_bifurcation, (6.0, 4.0, 0.0))
        geometry = driver.execute_async_script(
            "const cb = arguments[arguments.length - 1];"
            "window.trame.trigger('lks_jump', [arguments[0]]).then(cb, (e) => cb({error: String(e)}));",
            [float(v) for v in target],
        )
        driver.execute_script("window.trame.state.set('lks_cou_label', 'PB');")
        WebDriverWait(driver, 10, 0.1).until(lambda _: driver.find_element(By.ID, "lks-cou-place").is_enabled())
        seq = message_seq()
        driver.find_element(By.ID, "lks-cou-place").click()
        wait_message(seq, "click the PB landmark")
        g = geometry["Red"]
        xy = np.linalg.inv(np.asarray(g["xy_to_ras"]).reshape(4, 4)) @ np.r_[target, 1.0]
        rect = driver.execute_script(
            "const r = document.getElementById('lks-view-Red').parentElement.getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];"
        )
        w, h = g["size"]
        px = (rect[0] + xy[0] * rect[2] / w, rect[1] + rect[3] - xy[1] * rect[3] / h)
        planned = int(state("lks_plan_seq"))
        seq = message_seq()
        ab = ActionBuilder(driver)
        ab.pointer_action.move_to_location(round(px[0]), round(px[1])).pointer_down().pause(0.05).pointer_up()
        ab.perform()
        wait_message(seq, "landmark PB placed", timeout=30)
        pb = [p for p in state("lks_cou_points") if p["label"] == "PB"]
        pixel_mm = float(np.linalg.norm(np.asarray(g["xy_to_ras"]).reshape(4, 4)[:3, 0])) * w / rect[2]
        print(
            f"PB placed at {pb[0]['ras']} for a click at {np.round(target, 2).tolist()} (page pixel {pixel_mm:.2f} mm)"
        )
        assert len(pb) == 1 and np.linalg.norm(np.subtract(pb[0]["ras"], target)) < 2 * pixel_mm + 0.5
        WebDriverWait(driver, 120, 0.1).until(lambda _: int(state("lks_plan_seq")) > planned and not state("lks_busy"))
        moved = json.loads(driver.find_element(By.ID, "lks-cou-result").get_attribute("data-plan"))
        assert moved["landmarks"].startswith("user") and moved["resection"]["segments"] == [5, 6, 7, 8]
        shot("2-pb-placed")
        # -- drag the placed point with Slicer's markups widget (navigate tool) ------------------------------
        planned = int(state("lks_plan_seq"))
        seq = message_seq()
        ab = ActionBuilder(driver)
        ab.pointer_action.move_to_location(round(px[0]), round(px[1])).pause(0.3).pointer_down()
        for step in range(1, 7):
            ab.pointer_action.pause(0.1).move_to_location(round(px[0]) + 3 * step, round(px[1]))
        ab.pointer_action.pause(0.2).pointer_up()
        ab.perform()
        wait_message(seq, "landmark moved", timeout=30)
        dragged = next(p for p in state("lks_cou_points") if p["label"] == "PB")["ras"]
        shift = np.subtract(dragged, pb[0]["ras"])
        print(f"PB dragged 18 page pixels: moved {np.round(shift, 2).tolist()} mm")
        # the drag moves the point along the axial slice by the pointer's travel (18 page pixels)
        assert abs(abs(shift[0]) - 18 * pixel_mm) < 3 * pixel_mm + 0.5 and abs(shift[2]) < 0.01, shift
        WebDriverWait(driver, 120, 0.1).until(lambda _: int(state("lks_plan_seq")) > planned and not state("lks_busy"))
        assert server.alive()
        print(f"Couinaud browser flow {time.monotonic() - t0:.0f} s; load average {_loadavg()}")
    finally:
        driver.quit()
        server.stop()
        if os.environ.get("LKSEG_WEB_TEST_LOG"):
            print(server.output[-8000:])
