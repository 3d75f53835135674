"""`minidiff explore`: one self-contained page, checked in Python and driven in headless Chromium.

The browser test needs Debian's chromium and chromium-driver and the selenium package (the dev extra);
.ci/run installs them. Without them it is skipped, and the Python checks below still run.
"""

import base64
import io
import os
import re
import shutil
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from minidiff import Schedule
from minidiff.explore import build_page
from minidiff.explore import reverse as R
from minidiff.explore.page import CSP
from minidiff.training import sample
from minidiff.training import train as T

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOWN = 4


@pytest.fixture(scope="module")
def unconditional_page(tmp_path_factory):
    """The page of a 2-step tiny unconditional run on grey images (one channel): no guidance to offer."""
    out = tmp_path_factory.mktemp("uncond")
    T.train(T.TrainConfig(dataset="builtin", num_images=32, preset="tiny", batch_size=8, max_steps=2, minutes=0,
                          sample_every=0, ckpt_every=0, num_samples=4, sample_steps=2, device="cpu", judge_samples=0,
                          class_cond=False, sampler="ddim", unet={"in_channels": 1, "out_channels": 1}, out=str(out)))
    path = out / "explore.html"
    path.write_text(build_page(out / T.CHECKPOINT, num=4, shown=2, steps=(3,), progress=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def page(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "explore.html"
    # the page offers 3 steps and the checkpoint's 2 (not 10, 25, 50), to keep the test short
    path.write_text(build_page(tiny_checkpoint, num=8, shown=SHOWN, steps=(3,), progress=False), encoding="utf-8")
    return path


def drawn_by_minidiff_sample(checkpoint, command, tmp_path):
    """The first SHOWN images (uint8 [N, H, W, 3]) of the `minidiff sample` command the page prints."""
    assert command.startswith("minidiff sample CKPT ")
    npz = tmp_path / "s.npz"
    sample.main([str(checkpoint), *command.split()[3:], "--png", "", "--npz", str(npz)])
    with np.load(npz) as f:
        return f["images"][:SHOWN]


def last_frame(uri, frames):
    """The last frame of an interleaved sprite (reverse.interleaved_sprite), decoded in Python."""
    sprite = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    rows = sprite.shape[0] // frames
    return sprite[np.arange(rows) * frames + frames - 1]


def test_each_setting_ends_where_minidiff_sample_does(tiny_checkpoint, tmp_path):
    _, config, report = sample.load_run(tiny_checkpoint)
    settings = R.offered_settings(report, conditional=True)
    assert report in settings and len({R.setting_key(s) for s in settings}) == len(settings)
    assert {s["guidance"] for s in settings} == {1.0, 2.5, 7.5} and {s["spacing"] for s in settings} == {"trailing", "leading"}
    model, _ = sample.load_model(tiny_checkpoint)
    for s in (report, dict(report, sampler="ddim", steps=10, spacing="leading"), dict(report, guidance=7.5, guidance_rescale=0.7)):
        d = R.setting_data(model, config, s, report, num=8, shown=SHOWN, seed=0)
        frames = len(d["timesteps"]) + 1
        want = drawn_by_minidiff_sample(tiny_checkpoint, d["command"], tmp_path)
        assert np.array_equal(last_frame(d["xt"], frames).reshape(16, SHOWN, 16, 3).transpose(1, 0, 2, 3), want)
        assert np.array_equal(last_frame(d["x0"], frames), last_frame(d["xt"], frames))


def test_the_page_holds_everything_it_shows(page):
    text = page.read_text()
    assert f'content="{CSP}"' in text
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", text)  # no external image, script or style
    assert "http://" not in text and "https://" not in text
    assert os.path.getsize(page) < 2e6


def test_schedules_only_page(tmp_path, capsys):
    from minidiff.__main__ import main
    assert main(["explore", "--out", str(tmp_path / "s.html")]) == 0
    assert "wrote" in capsys.readouterr().out
    text = (tmp_path / "s.html").read_text()
    assert 'id="schedule-plot"' in text and 'id="rev-xt"' not in text


# ------------------------------------------------------------------------------ in a browser

@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_AVOID_STATS"] = "true"  # selenium manager: no statistics sent, no driver download
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1100,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_the_page_in_chromium(browser, page, tiny_checkpoint, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    d, js = browser, browser.execute_script
    d.get(page.as_uri())
    drawn = lambda: int(d.find_element("tag name", "body").get_attribute("data-drawn"))
    WebDriverWait(d, 10).until(lambda _: drawn() >= 2)  # the forward panel and the first reverse setting

    def settle(before):  # the page has drawn since `before` (a control that does nothing: the checks below fail)
        try:
            WebDriverWait(d, 5).until(lambda _: drawn() > before)
        except TimeoutException:
            pass

    canvases = lambda *ids: [js(f"return document.getElementById('{i}').toDataURL()") for i in ids]
    text = lambda i: d.find_element("id", i).text

    # every slider from one end to the other changes what is drawn
    for slider, ids in (("t", ("fwd-flawed", "fwd-zero", "schedule-plot")), ("step", ("rev-xt", "rev-x0", ))):
        el = d.find_element("id", slider)
        n = drawn(); el.send_keys(Keys.HOME); settle(n)
        low = canvases(*ids)
        n = drawn(); el.send_keys(Keys.END); settle(n)
        high = canvases(*ids)
        assert el.get_attribute("value") == el.get_attribute("max")
        assert all(a != b for a, b in zip(low, high)), f"moving slider {slider} left a canvas as it was"

    # printed alpha_bar at the slider's t is Schedule.alphas_cumprod[t], for both flawed schedules
    for kind in ("scaled_linear", "linear"):
        d.find_element("css selector", f'[data-flawed="{kind}"]').click()
        for t in (0, 1, 500, 998, 999):
            n = drawn()
            js("const s = document.getElementById('t'); s.value = arguments[0]; s.dispatchEvent(new Event('input'))", t)
            settle(n)
            for which, zero in (("flawed", False), ("zero", True)):
                want = float(Schedule.make(kind, 1000, zero_snr=zero).alphas_cumprod[t])
                shown = text(f"ab-{which}")
                assert shown == ("0" if want == 0 else f"{want:.5e}".replace("e-0", "e-").replace("e+0", "e+")), (kind, t, which)

    # the last reverse step is `minidiff sample` with the printed command, bit for bit in uint8
    for factor, value in (("steps", "3"), ("spacing", "leading"), ("guidance", "7.5"), ("rescale", "0.7")):
        n = drawn()
        d.find_element("css selector", f'[data-factor="{factor}"][data-value="{value}"]').click()
        settle(n)
        assert d.find_element("css selector", f'[data-factor="{factor}"][data-value="{value}"]').get_attribute("aria-pressed") == "true"
        size = js("return document.getElementById('rev-xt').height")
        pixels = np.array(js("const c = document.getElementById('rev-xt');"
                             "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"), np.uint8)
        pixels = pixels.reshape(size, SHOWN, size, 4)[..., :3].transpose(1, 0, 2, 3)
        want = drawn_by_minidiff_sample(tiny_checkpoint, text("rev-command"), tmp_path)
        assert np.array_equal(pixels, want), (factor, value)
        printed = [float(b) for b in text("rev-brightness").split(", ")]  # the predicted x0 at the end: the sample
        assert np.allclose(printed, want.reshape(SHOWN, -1).mean(1) / 127.5 - 1, atol=0.0051)
        spread = np.std(np.load(tmp_path / "s.npz")["images"].reshape(8, -1).mean(1) / 127.5 - 1)
        assert abs(float(text("rev-spread")) - spread) < 0.0006  # all 8 samples' brightness, at the last step

    # nothing fetched, nothing wrong
    resources = js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith("data:") for r in resources), resources
    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
    assert torch.get_num_threads() == 1


def test_an_unconditional_grey_model_in_chromium(browser, unconditional_page):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(unconditional_page.as_uri())
    WebDriverWait(browser, 10).until(lambda d: int(d.find_element("tag name", "body").get_attribute("data-drawn")) >= 2)
    assert not browser.find_elements("css selector", '[data-factor="guidance"]')
    samplers = [b.text for b in browser.find_elements("css selector", '[data-factor="sampler"]')]
    assert samplers == ["DDIM", "DPM-Solver++(2M)"]  # the run's own, DDIM, is not offered twice
    assert browser.find_element("id", "rev-command").text == "minidiff sample CKPT --num 4 --seed 0"
    assert browser.execute_script("return document.getElementById('rev-xt').width") == 2 * 16
    assert not [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
