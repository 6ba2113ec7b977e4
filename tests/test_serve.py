"""`kcolor serve` (kcolor.serve): the app over HTTP with Starlette's test client, `serve.run`
in a subprocess, and the page in a real headless Chromium (skipped where there is none).

The browser test needs Debian's chromium and chromium-driver and the selenium package;
it drives /usr/bin/chromium through /usr/bin/chromedriver and downloads nothing.
"""

import io
import os
import queue
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_photo
from PIL import Image
from starlette.testclient import TestClient

from kcolor import api, infer, model, serve

LIMIT_MB = 1  # the apps under test refuse uploads over 1 MB


def gray_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A gray photo-like JPEG of width x height (not square: a swapped size shows)."""
    rgb = smooth_photo(np.random.default_rng(seed), height, width)
    Image.fromarray(rgb).convert("L").save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return gray_jpeg(root / "old-bridge.jpg", 192, 108), gray_jpeg(root / "b.jpg", 100, 140, 1)


@pytest.fixture(scope="module")
def photo(photos):
    return photos[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    prior = np.random.default_rng(0).random(313) + 0.01
    model.build_model(width=0.0625, input_size=32, prior=prior).save(path)
    model.set_decoding(path, rebalance_strength=0.75)
    return path


@pytest.fixture(scope="module")
def colorizer(tiny_model):
    return infer.load_colorizer(tiny_model)


@pytest.fixture(scope="module")
def client(colorizer):
    return TestClient(serve.make_app(colorizer, max_upload_mb=LIMIT_MB))


def png_image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_page_carries_the_models_settings(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert '"max_upload_mb": 1' in page.text and "/*SETTINGS*/" not in page.text
    settings = client.get("/settings").json()
    assert settings["temperature"] == pytest.approx(0.38)
    assert settings["rebalance_strength"] == 0.75 and settings["can_rebalance"]
    assert settings["model"] == "model tiny.keras"


def test_upload_answers_the_apis_colorization_at_the_photos_size(client, colorizer, photo):
    data = photo.read_bytes()
    out = png_image(client.post("/colorize", content=data))
    assert out.size == (192, 108) and out.mode == "RGB"
    with Image.open(photo) as img:
        expected = api.Colorizer(colorizer).colorize(img)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))

    # the sliders' settings reach the decoding
    query = "/colorize?temperature=0.1&rebalance_strength=2"
    changed = png_image(client.post(query, content=data))
    assert changed.size == (192, 108)
    assert not np.array_equal(np.asarray(changed), np.asarray(out))


def test_alpha_and_exif_orientation_are_kept(client):
    rgba = Image.new("RGBA", (40, 30), (90, 90, 90, 128))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    out = png_image(client.post("/colorize", content=buf.getvalue()))
    assert out.mode == "RGBA" and out.size == (40, 30)
    assert np.asarray(out)[..., 3].max() == 128

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright photo is 30 x 40
    buf = io.BytesIO()
    Image.new("L", (40, 30), 100).save(buf, "JPEG", exif=exif.tobytes())
    assert png_image(client.post("/colorize", content=buf.getvalue())).size == (30, 40)


def chunks(size, step=256 * 1024):
    """A body of `size` zero bytes sent chunked (no Content-Length)."""
    for start in range(0, size, step):
        yield bytes(min(step, size - start))


BAD_UPLOADS = {  # case: (body, or how to make it from the photo's bytes; query; status; message)
    "not an image": (b"just some text\n", "", 400, "not an image"),
    "truncated": (lambda data: data[: len(data) // 2], "", 400, "truncated"),
    "empty": (b"", "", 400, "upload is empty"),
    "too big": (bytes(1_200_000), "", 413, "photo too big: 1.2 MB, the limit is 1 MB"),
    "too big, chunked": (lambda _: chunks(3_000_000), "", 413, "the limit is 1 MB"),
    "bad temperature": (None, "?temperature=warm", 400, "temperature: expected a number"),
    "zero temperature": (None, "?temperature=0", 400, "temperature: expected > 0"),
    "NaN temperature": (None, "?temperature=nan", 400, "temperature: expected a number"),
    "strength": (None, "?rebalance_strength=3", 400, "rebalance strength: expected a value"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_gets_a_message_and_the_server_goes_on(client, photo, case):
    body, query, status, message = BAD_UPLOADS[case]
    data = photo.read_bytes()
    body = data if body is None else body(data) if callable(body) else body
    response = client.post(f"/colorize{query}", content=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert png_image(client.post("/colorize", content=data)).size == (192, 108)


def test_a_failure_of_the_model_is_a_message_too(client, photo, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(api.Colorizer, "colorize", fail)
    response = client.post("/colorize", content=photo.read_bytes())
    assert response.status_code == 500
    assert response.json()["error"] == "colorizing failed: out of memory"
    monkeypatch.undo()
    assert png_image(client.post("/colorize", content=photo.read_bytes())).size == (192, 108)


def test_too_many_pixels_is_refused_from_the_header(client, photo, monkeypatch):
    monkeypatch.setattr(serve, "MAX_PIXELS", 10_000)
    response = client.post("/colorize", content=photo.read_bytes())
    assert response.status_code == 413
    assert response.json()["error"] == (
        "photo too large: 192 x 108 pixels, the limit is 0.01 megapixels"
    )


def test_bad_limit_and_taken_port_fail_in_one_line(colorizer):
    with pytest.raises(ValueError, match="max_upload_mb: expected > 0, got 0"):
        serve.make_app(colorizer, max_upload_mb=0)
    taken = serve.bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+: "):
            serve.bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


# --- serve.run in a subprocess, and the page in a browser -------------------------------


@pytest.fixture(scope="module")
def live_url(tiny_model, tmp_path_factory):
    """`serve.run` on a free loopback port in a subprocess; the URL it announces."""
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    code = (
        "import sys; from kcolor import serve; "
        f"serve.run('127.0.0.1', 0, sys.argv[1], max_upload_mb={LIMIT_MB})"
    )
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_model)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout])
    reader.start()
    try:
        url = None
        while url is None:  # bounded: each wait is at most 120 s, and the process may end
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                pytest.fail(f"kcolor serve announced no URL in 120 s: {log.read_text()[-2000:]}")
            if line.startswith("kcolor serve: http://127.0.0.1:"):
                url = line.split()[2]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=30)  # the pipe is at its end once the process is gone
        proc.stdout.close()


@pytest.mark.slow
def test_run_announces_its_url_once_it_serves(live_url, photo):
    with urllib.request.urlopen(live_url, timeout=30) as page:
        assert page.status == 200 and b'type="file"' in page.read()
    request = urllib.request.Request(live_url + "colorize", data=photo.read_bytes())
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert Image.open(io.BytesIO(answer.read())).size == (192, 108)


def chromium():
    """(browser, driver) paths, or None when this machine has no Chromium to drive."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]


@pytest.fixture
def browser():
    found = chromium()
    if found is None:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in BROWSER_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_page_in_a_browser_colorizes_and_reports_bad_files(live_url, browser, photos, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60).until
    browser.get(live_url)
    wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    pick = browser.find_element(By.ID, "file")

    def result():
        wait(lambda d: d.find_element(By.ID, "compare").get_attribute("data-state") == "done")
        return browser.execute_script(
            "const a = document.getElementById('after');"
            "return [a.naturalWidth, a.naturalHeight, a.src];"
        )

    pick.send_keys(str(photos[0]))
    width, height, first = result()
    assert (width, height) == (192, 108)
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == "old-bridge-color.png"
    assert link.get_attribute("href") == first

    # a slider moved: the photo is colorized again with the new setting
    browser.execute_script(
        "const t = document.getElementById('temperature'); t.value = 0.9;"
        "t.dispatchEvent(new Event('input')); t.dispatchEvent(new Event('change'));"
    )
    wait(lambda d: result()[2] != first)

    def message_after(path):
        pick.send_keys(str(path))
        wait(lambda d: path.name in d.find_element(By.ID, "messages").text)
        return browser.find_element(By.ID, "messages").text

    (tmp_path / "notes.txt").write_text("not a photo\n")
    assert "notes.txt: not an image" in message_after(tmp_path / "notes.txt")
    (tmp_path / "huge.jpg").write_bytes(bytes(1_500_000))
    assert "huge.jpg: photo too big: 1.5 MB, the limit is 1 MB" in message_after(
        tmp_path / "huge.jpg"
    )
    # the server still colorizes, and the page shows the new photo
    pick.send_keys(str(photos[1]))
    wait(lambda d: d.find_element(By.ID, "status").text.startswith("b.jpg"))
    assert result()[:2] == [100, 140]
    errors = [e["message"] for e in browser.get_log("browser") if e["source"] == "javascript"]
    assert not errors, errors
