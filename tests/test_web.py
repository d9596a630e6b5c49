"""The web page end to end: real headless Chromium -> web/proxy.py -> the session's real TorchServe.

Needs Debian's chromium and chromium-driver (`.ci/run.d/web-deps.sh` installs them). The browser
emulates a phone (390x844 CSS px, touch, iPhone user agent). A screenshot of the phone screen with a
verdict is saved to build/test-artifacts/web/ and, when it changed, to docs/images/web_screenshot.png.
"""
from __future__ import annotations

import base64
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, SAMPLE, free_ports

ARTIFACTS = Path(os.environ.get("HOTDOG_TEST_ARTIFACTS", REPO / "build" / "test-artifacts")) / "web"
PHONE = {"width": 390, "height": 844, "pixelRatio": 2}
IPHONE_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 "
             "(KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1")
WAIT_S = 20
DOC_SCREENSHOT = REPO / "docs" / "images" / "web_screenshot.png"


# ---- The proxy, as `make web` runs it -------------------------------------------------------------


@dataclass
class Proxy:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_proxy(folder: Path, *args: str) -> Proxy:
    folder.mkdir(parents=True, exist_ok=True)
    ready, log = folder / "ready", folder / "proxy.log"
    ready.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "web.proxy", "--port", "0", "--ready-file", str(ready), *args],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 15
    while not ready.exists() or not ready.read_text().endswith("\n"):
        if proc.poll() is not None:
            pytest.fail(f"web.proxy exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"web.proxy did not start:\n{log.read_text()}")
        time.sleep(0.05)
    port = int(ready.read_text().split()[1])
    return Proxy(f"http://127.0.0.1:{port}", port, log, proc)


def ts_args(server) -> list[str]:
    return ["--config", str(server.cfg.path), "--workdir", str(server.workdir)]


@pytest.fixture(scope="module")
def proxy(torchserve, tmp_path_factory):
    p = start_proxy(tmp_path_factory.mktemp("web"), *ts_args(torchserve))
    try:
        yield p
    finally:
        p.stop()


def http_request(url: str, method: str = "GET", path: str = "/", body: bytes | None = None,
                 headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Raw HTTP (the path is sent exactly as given, no normalization): status, headers, body."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# ---- The browser ----------------------------------------------------------------------------------


def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the web test needs Debian's chromium and chromium-driver: "
                    "run `bash .ci/run.d/web-deps.sh` (as root) or apt-get install chromium chromium-driver")
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--lang=en-US"):
        opts.add_argument(arg)
    opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {**PHONE, "touch": True}, "userAgent": IPHONE_UA})
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every response, for the token test
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(options=opts, service=Service(chromedriver, log_output=str(log)))
    try:
        driver.set_page_load_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_script_timeout(WAIT_S)
    driver.get(url + "/")
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                        in ("idle", "error"))


def wait_outcome(driver) -> str:
    """Waits until the page shows a verdict or an error; returns the state."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: (s := d.find_element("tag name", "body").get_attribute("data-state")) in ("result", "error") and s)


def upload_with_camera_button(driver, path: Path) -> str:
    driver.find_element("id", "photo").send_keys(str(path))
    return wait_outcome(driver)


def upload_by_drop(driver, path: Path, mime: str) -> str:
    """Drag-and-drop as on a desktop: a real File in a DataTransfer, dropped on the page."""
    driver.execute_script("""
        const [b64, name, type] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type}));
        document.body.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true, cancelable: true}));
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, base64.b64encode(path.read_bytes()).decode(), path.name, mime)
    return wait_outcome(driver)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def data(driver, element_id: str, key: str) -> str:
    return driver.find_element("id", element_id).get_attribute(f"data-{key}")


# Records, inside the page, every fetch it makes: the request body (base64) and the response body
# (text). WebDriver-injected scripts are not subject to the page's CSP. Chrome's DevTools buffers
# are not used for this: Network.getRequestPostData has nothing for Blob bodies and
# Network.getResponseBody loses bodies evicted from the inspector cache, both more so under load.
# The wrapper starts the real fetch first, with the page's own arguments, and records on the side.
RECORD_FETCHES = """
    if (window.__fetches) return;
    const fetches = window.__fetches = [];
    const original = window.fetch;
    const base64 = (buf) => {
      const bytes = new Uint8Array(buf);
      let s = "";
      for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return btoa(s);
    };
    window.fetch = function (input, init) {
      const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url, location.href);
      const entry = {path: url.pathname, method: ((init && init.method) || (input && input.method) || "GET").toUpperCase()};
      const done = [];
      // A Request built from the same arguments reads any body (Blob, FormData, ArrayBuffer, string)
      // without using up the page's own.
      if (typeof input === "string" || input instanceof URL) {
        done.push(new Request(url, {method: entry.method, body: init && init.body, headers: init && init.headers})
          .arrayBuffer().then((b) => { entry.request = base64(b); }, (e) => { entry.requestError = String(e); }));
      }
      const answer = original.apply(this, arguments);
      done.push(answer.then((resp) => {
        entry.status = resp.status;
        entry.headers = JSON.stringify([...resp.headers]);
        return resp.clone().text().then((t) => { entry.response = t; });
      }).catch((e) => { entry.responseError = String(e); }));
      entry.done = Promise.all(done);
      fetches.push(entry);
      return answer;
    };
"""


def record_fetches(driver) -> None:
    """From now until the next page load, the page's fetches are recorded (see fetches())."""
    driver.execute_script(RECORD_FETCHES)


def fetches(driver) -> list[dict]:
    """The page's fetches since record_fetches(), each once its request and response are read:
    path, method, request (base64 body), status, headers (JSON), response (text)."""
    got = driver.execute_async_script("""
        const callback = arguments[arguments.length - 1];
        const all = window.__fetches;
        if (!all) { callback(null); return; }
        Promise.all(all.map((f) => f.done)).then(
          () => callback(all.map(({done, ...f}) => f)), (e) => callback(String(e)));
    """)
    assert isinstance(got, list), f"the page's fetches were not recorded: {got}"
    return got


def uploaded_bytes(driver) -> bytes:
    """The body of the page's last POST /api/predict, as the page handed it to fetch()."""
    posts = [f for f in fetches(driver) if f["path"] == "/api/predict" and f["method"] == "POST"]
    assert posts, "the page sent no POST /api/predict"
    assert "request" in posts[-1], posts[-1]
    return base64.b64decode(posts[-1]["request"])


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def refresh_doc_screenshot(shot: Path) -> None:
    """docs/web-page.md's picture is this test's hot dog screenshot: rewritten when its pixels differ
    (a PNG re-encode alone leaves the committed file alone)."""
    with Image.open(shot) as now:
        pixels = now.convert("RGB").tobytes()
    if not DOC_SCREENSHOT.exists() or Image.open(DOC_SCREENSHOT).convert("RGB").tobytes() != pixels:
        shutil.copyfile(shot, DOC_SCREENSHOT)


# ---- Ground truth: TorchServe asked directly ---------------------------------------------------


def served(server, image: bytes) -> tuple[int, dict]:
    from serving.http_client import predict_bytes

    return predict_bytes(image, server.cfg.inference_url, server.keys["inference"])


def confidence_text(p: float) -> str:
    pct = p * 100
    return ">99% sure" if pct >= 99.5 else f"{math.floor(pct + 0.5)}% sure"  # the page's Math.round


@pytest.fixture(scope="module")
def clearest(torchserve) -> dict[str, Path]:
    """Per class, the sample photo the served model is most sure belongs to it."""
    best = {}
    for label in ("hot_dog", "not_hot_dog"):
        scores = []
        for path in sorted((SAMPLE / label).glob("*.jpg")):
            status, answer = served(torchserve, path.read_bytes())
            assert status == 200, answer
            scores.append((answer["probabilities"][label], path))
        best[label] = max(scores)[1]
    return best


# ---- Tests ----------------------------------------------------------------------------------------


def test_phone_page_shows_hotdog_and_not_hotdog(browser, proxy, torchserve, clearest):
    open_page(browser, proxy.url)
    record_fetches(browser)
    viewport = browser.execute_script("return [innerWidth, innerHeight, matchMedia('(pointer: coarse)').matches]")
    assert viewport == [PHONE["width"], PHONE["height"], True]
    # One-handed: the camera button is big and in the bottom third of the screen, inside the viewport.
    button = browser.find_element("id", "camera").rect
    assert button["width"] >= 88 and button["height"] >= 88
    assert button["y"] + button["height"] <= PHONE["height"]
    assert button["y"] >= PHONE["height"] * 2 / 3
    assert browser.find_element("id", "library").rect["height"] >= 44
    photo = browser.find_element("id", "photo")
    assert photo.get_attribute("accept") == "image/*" and photo.get_attribute("capture") == "environment"

    for label, verdict, upload in (("hot_dog", "HOTDOG ✅", upload_with_camera_button),
                                   ("not_hot_dog", "NOT HOTDOG ❌", None)):
        path = clearest[label]
        status, truth = served(torchserve, path.read_bytes())
        assert status == 200 and truth["label"] == label, f"the served model gets {path} wrong: {truth}"
        state = upload(browser, path) if upload else upload_by_drop(browser, path, "image/jpeg")
        assert state == "result", text(browser, "error")
        assert text(browser, "verdict") == verdict
        assert text(browser, "confidence") == confidence_text(float(data(browser, "result", "confidence")))
        assert data(browser, "result", "label") == label
        # What the page shows is TorchServe's answer for exactly the bytes it sent.
        sent = uploaded_bytes(browser)
        assert len(sent) == int(data(browser, "upload-info", "bytes"))
        status, answer = served(torchserve, sent)
        assert status == 200 and answer["label"] == label
        assert abs(float(data(browser, "result", "confidence")) - answer["confidence"]) < 1e-9
        assert browser.find_element("id", "preview").is_displayed()
        shot = save_screenshot(browser, f"web_{label}.png")
        assert Image.open(shot).size == (PHONE["width"] * PHONE["pixelRatio"], PHONE["height"] * PHONE["pixelRatio"])
        if label == "hot_dog":
            refresh_doc_screenshot(shot)


def test_non_image_is_an_error_in_words(browser, proxy, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list: buns, mustard, onions\n" * 20)
    open_page(browser, proxy.url)
    assert upload_with_camera_button(browser, notes) == "error"
    assert text(browser, "error-title") == "That's not a photo I can read"
    detail = text(browser, "error-detail")  # the server's reason, in words
    assert detail.startswith("Not an image") and "JPEG" in detail
    assert not browser.find_element("id", "result").is_displayed()
    save_screenshot(browser, "web_not_an_image.png")
    assert re.search(r'"POST /api/predict" 415 in=\d+B', proxy.log_text())

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert upload_with_camera_button(browser, empty) == "error"
    assert text(browser, "error-title") == "That's not a photo I can read"
    assert text(browser, "error-detail") == "The file is empty."


def test_large_phone_photo_is_shrunk_before_upload(browser, proxy, torchserve, clearest, tmp_path):
    import numpy as np

    config = json.loads(http_request(proxy.url, path="/api/config")[2])
    assert config["upload_short_side"] == 2 * config["resize_size"]
    # A 12 MP portrait phone photo stored sideways with EXIF orientation 6, as iPhones do.
    upright = Image.open(clearest["hot_dog"]).convert("RGB").resize((3000, 4000), Image.BICUBIC)
    noisy = np.asarray(upright, dtype=np.int16) + np.random.default_rng(0).integers(-6, 7, (4000, 3000, 3), dtype=np.int16)
    stored = Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    big = tmp_path / "IMG_0001.jpg"
    stored.save(big, quality=92, exif=exif)
    assert big.stat().st_size > 2_000_000 and stored.size == (4000, 3000)

    open_page(browser, proxy.url)
    assert upload_with_camera_button(browser, big) == "result", text(browser, "error")
    sent_bytes = int(data(browser, "upload-info", "bytes"))
    sent_w, sent_h = int(data(browser, "upload-info", "width")), int(data(browser, "upload-info", "height"))
    assert data(browser, "upload-info", "shrunk") == "true"
    # Upright (EXIF applied in the browser) and the shorter side exactly what the model can use.
    assert (sent_w, sent_h) == (config["upload_short_side"], round(4000 * config["upload_short_side"] / 3000))
    assert "shrunk from 3000×4000" in text(browser, "upload-info")
    # The proxy saw the small upload, not the 12 MP file.
    seen = [int(n) for n in re.findall(r'"POST /api/predict" 200 in=(\d+)B', proxy.log_text())]
    assert seen and seen[-1] == sent_bytes and sent_bytes < big.stat().st_size / 20
    # Nothing lost: the full-size photo sent straight to TorchServe gets the same answer.
    status, full = served(torchserve, big.read_bytes())
    assert status == 200
    page_confidence = float(data(browser, "result", "confidence"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "web_shrink.json").write_text(json.dumps({
        "photo": [3000, 4000], "photo_bytes": big.stat().st_size, "sent": [sent_w, sent_h], "sent_bytes": sent_bytes,
        "label_full": full["label"], "confidence_full": full["confidence"],
        "label_sent": data(browser, "result", "label"), "confidence_sent": page_confidence}, indent=2))
    assert data(browser, "result", "label") == full["label"]
    assert abs(page_confidence - full["confidence"]) < 0.02


def test_server_down_and_page_server_gone_are_said_in_words(browser, torchserve, tmp_path):
    (dead_port,) = free_ports(1)  # nothing listens there: TorchServe is "down"
    down = start_proxy(tmp_path / "down", *ts_args(torchserve), "--inference-url", f"http://127.0.0.1:{dead_port}")
    try:
        open_page(browser, down.url)
        photo = SAMPLE / "hot_dog" / "x1.jpg"
        assert upload_with_camera_button(browser, photo) == "error"
        assert text(browser, "error-title") == "The hot dog server is down"
        assert "not running" in text(browser, "error-detail")
        assert not re.search(r"`|\bmake\b", text(browser, "error-detail"))  # words for a phone user, no commands
        save_screenshot(browser, "web_server_down.png")
        status, _, body = http_request(down.url, "POST", "/api/predict", photo.read_bytes())
        assert status == 503 and "not running" in json.loads(body)["error"]

        down.stop()  # now the page's own server is gone too
        assert upload_with_camera_button(browser, photo) == "error"
        assert text(browser, "error-title") == "Can't reach the server"
        assert "same network" in text(browser, "error-detail")
    finally:
        down.stop()


def test_too_large_is_said_in_words(browser, torchserve, tmp_path):
    small = start_proxy(tmp_path / "small", *ts_args(torchserve), "--max-upload-mb", "0.02")  # a 20 KB cap
    try:
        open_page(browser, small.url)
        photo = SAMPLE / "hot_dog" / "x10.jpg"  # still more than 20 KB after the shrink
        assert upload_with_camera_button(browser, photo) == "error"
        assert text(browser, "error-title") == "That photo is too large"
        assert "the limit is 20 KB" in text(browser, "error-detail")
        blob = tmp_path / "scan.raw"  # not something a browser can shrink
        blob.write_bytes(os.urandom(64 * 1024))
        assert upload_with_camera_button(browser, blob) == "error"
        assert text(browser, "error-title") == "That photo is too large"
        assert '"POST /api/predict"' not in small.log_text()  # refused before uploading anything
    finally:
        small.stop()


def test_token_never_reaches_the_browser(browser, proxy, torchserve):
    browser.get_log("performance")  # drop what earlier tests captured
    open_page(browser, proxy.url)
    record_fetches(browser)
    assert upload_with_camera_button(browser, SAMPLE / "not_hot_dog" / "x1.jpg") == "result"
    assert upload_by_drop(browser, Path(__file__), "text/x-python") == "error"  # an error answer too
    # Every header the browser received (the performance log: what the network stack saw, raw ones too).
    responses, received = [], []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.responseReceived":
            responses.append(msg["params"]["response"])
            received.append(json.dumps(msg["params"]["response"]["headers"]))
        elif msg["method"] == "Network.responseReceivedExtraInfo":
            received.append(json.dumps(msg["params"]["headers"]))
            received.append(msg["params"].get("headersText", ""))
    urls = {r["url"].removeprefix(proxy.url) for r in responses}
    assert {"/", "/static/app.js", "/static/style.css", "/api/config", "/api/predict"} <= urls
    # Every body: the page's own API calls as its fetch() got them...
    api = fetches(browser)
    assert [(f["path"], f["status"]) for f in api] == [("/api/predict", 200), ("/api/predict", 415)], api
    for f in api:
        received += [f["headers"], f["response"]]
    # ...and the page, its script, its style sheet and its config, fetched again by the browser (the
    # page loaded them before anything in it could be recorded), and as the proxy serves them.
    loaded = browser.execute_async_script("""
        const callback = arguments[arguments.length - 1];
        Promise.all(arguments[0].map((path) => fetch(path, {cache: "no-store"}).then(async (r) =>
            [path, r.status, JSON.stringify([...r.headers]), await r.text()])))
          .then(callback, (e) => callback(String(e)));
    """, ["/", "/static/app.js", "/static/style.css", "/api/config"])
    assert isinstance(loaded, list), loaded
    for path, status, headers, body in loaded:
        assert status == 200, (path, status)
        assert body == http_request(proxy.url, path=path)[2].decode(), path
        received += [headers, body]
    everything = "\n".join(received)
    assert '"label"' in everything and "not an image" in everything  # we did capture the API answers
    assert "hotdog" in everything.lower() and "fetch(" in everything  # and the page and its script
    keys = torchserve.keys
    assert set(keys) >= {"inference", "management", "API"}
    for name, key in keys.items():
        assert key not in everything, f"TorchServe's {name} key reached the browser"
    # Nor does the page leak anything through its own JS globals or storage.
    leaked = browser.execute_script("return JSON.stringify([Object.keys(window), {...localStorage}, document.cookie])")
    assert not any(key in leaked for key in keys.values())


def test_only_the_predictions_path_is_exposed(proxy, torchserve):
    photo = (SAMPLE / "hot_dog" / "x1.jpg").read_bytes()
    assert http_request(proxy.url, "POST", "/api/predict", photo, {"Content-Type": "image/jpeg"})[0] == 200
    for path in ("/predictions/hotdog", "/ping", "/models", "/models/hotdog", "/metrics", "/token?type=inference",
                 "/api/models", "/api/ping", "/api/predict/../../models", "/api/predict/x", "/api//predict",
                 "/static/../proxy.py", "/web/proxy.py", "/key_file.json", "/static/", "/%2e%2e/key_file.json"):
        for method in ("GET", "POST"):
            status, _, body = http_request(proxy.url, method, path, b"" if method == "POST" else None)
            assert status == 404, (method, path, status, body[:200])
            assert torchserve.keys["inference"].encode() not in body
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        assert http_request(proxy.url, method, "/models/hotdog")[0] == 404
    status, headers, _ = http_request(proxy.url, "GET", "/api/predict")
    assert status == 405 and headers["Allow"] == "POST"
    # A page on another origin cannot reach the loopback proxy by rebinding its DNS name to 127.0.0.1.
    status, _, body = http_request(proxy.url, "POST", "/api/predict", photo, {"Host": "evil.example:80"})
    assert status == 403 and "localhost" in json.loads(body)["error"]
    # The upload cap, in words, before anything reaches TorchServe.
    cap = json.loads(http_request(proxy.url, path="/api/config")[2])["max_upload_bytes"]
    status, _, body = http_request(proxy.url, "POST", "/api/predict", b"\xff" * (cap + 1))
    assert status == 413 and "limit" in json.loads(body)["error"]
    # The page's security headers.
    status, headers, _ = http_request(proxy.url, "GET", "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_proxy_answers_a_jpeg_sent_as_a_form(proxy, torchserve):
    """curl --data-binary @photo.jpg sends application/x-www-form-urlencoded: TorchServe's frontend
    parses that as form fields and answers 500 before the handler sees it (reports/bad_inputs.md).
    The proxy forwards the body as bytes, so the photo gets its answer."""
    photo = (SAMPLE / "hot_dog" / "x1.jpg").read_bytes()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status = http_request(torchserve.cfg.inference_url, "POST", "/predictions/hotdog", photo,
                          {**form, **torchserve.inference_headers()})[0]
    assert status == 500  # TorchServe 0.12.0's limit, still there
    status, _, body = http_request(proxy.url, "POST", "/api/predict", photo, form)
    assert status == 200 and json.loads(body)["label"] in ("hot_dog", "not_hot_dog")


def test_proxy_renews_a_rejected_inference_key(proxy, torchserve):
    """TorchServe's keys expire (60 min by default): a long-running `make web` must renew its key with
    the API key instead of failing. Here the key the proxy holds is revoked by rotating it."""
    photo = (SAMPLE / "not_hot_dog" / "x1.jpg").read_bytes()
    assert http_request(proxy.url, "POST", "/api/predict", photo)[0] == 200
    key_file = torchserve.workdir / "key_file.json"
    before = key_file.read_text()
    old = torchserve.keys["inference"]
    rotate = urllib.request.Request(f"{torchserve.cfg.management_url}/token?type=inference",
                                    headers={"Authorization": f"Bearer {torchserve.keys['API']}"})
    with urllib.request.urlopen(rotate, timeout=10) as r:
        assert r.status == 200
    assert torchserve.keys["inference"] != old  # the proxy's key is now refused by TorchServe
    key_file.write_text(before)  # and the file on disk still holds it (as when a key expires)
    try:
        status, _, body = http_request(proxy.url, "POST", "/api/predict", photo)
        assert status == 200, body
        assert json.loads(body)["label"] in ("hot_dog", "not_hot_dog")
        assert torchserve.keys["inference"] != old
        assert "renewed TorchServe's inference key" in proxy.log_text()
    finally:
        if torchserve.keys["inference"] == old:  # not renewed: leave the session's other tests a valid key
            with urllib.request.urlopen(rotate, timeout=10):
                pass
    # The rest of the session's tests read the current key from the file, which TorchServe rewrote.
    assert served(torchserve, photo)[0] == 200


def test_loopback_url_keeps_ipv6_brackets():
    from web.proxy import _loopback_url

    assert _loopback_url("http://[::1]:8080") == "http://[::1]:8080"
    assert urllib.parse.urlsplit(_loopback_url("https://[::1]:8443")).port == 8443
    for everywhere in ("http://0.0.0.0:8080", "http://[::]:8080"):  # bind-all addresses: reached over loopback
        assert _loopback_url(everywhere) == "http://127.0.0.1:8080"


def test_a_taken_port_names_the_make_variable():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        done = subprocess.run([sys.executable, "-m", "web.proxy", "--port", str(squatter.getsockname()[1])],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "make web WEB_PORT=..." in done.stderr, done.stderr


def test_lan_flag_listens_on_all_interfaces(torchserve, tmp_path):
    lan = start_proxy(tmp_path / "lan", *ts_args(torchserve), "--lan")
    try:
        assert "listening on the network" in lan.log_text()
        # Any Host header is accepted (a phone uses the computer's IP address).
        status, _, _ = http_request(lan.url, "GET", "/api/config", headers={"Host": "192.168.1.20"})
        assert status == 200
        bound = lan.log.parent.joinpath("ready").read_text().split()[0]
        assert bound == "0.0.0.0"
    finally:
        lan.stop()


def test_proxy_takes_every_body_torchserve_takes(proxy, torchserve, tmp_path):
    """Raw bytes, a multipart form (curl -F) and base64 JSON, as the README sends them to TorchServe:
    the proxy gets the same answer for each as TorchServe gives for the raw bytes."""
    photo = SAMPLE / "hot_dog" / "x1.jpg"
    status, truth = served(torchserve, photo.read_bytes())
    assert status == 200
    url = f"{proxy.url}/api/predict"
    b64 = base64.b64encode(photo.read_bytes()).decode()
    (tmp_path / "body.json").write_text(json.dumps({"data": b64}))
    forms = {
        "raw": ["-H", "Content-Type: image/jpeg", "--data-binary", f"@{photo}"],
        "multipart": ["-F", f"file=@{photo}"],
        "base64 JSON": ["-H", "Content-Type: application/json", "--data-binary", f"@{tmp_path / 'body.json'}"],
    }
    for name, args in forms.items():
        done = subprocess.run(["curl", "-sS", "--fail-with-body", *args, url], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        assert json.loads(done.stdout) == truth, name
    doc = (REPO / "docs" / "web-page.md").read_text()
    assert "multipart" in doc and "base64" in doc and "curl -F" in doc  # the doc says which bodies it takes


def test_page_messages_name_no_developer_command():
    """What the page can show a phone user is in words: no `make ...`, no backticks (app.js's messages,
    and every string in the proxy's code that answers the page)."""
    import ast

    js = (REPO / "web" / "static" / "app.js").read_text()
    shown = re.findall(r'"([^"\n]{20,})"', js) + re.findall(r"`([^`\n]{20,})`", js)  # strings, templates
    tree = ast.parse((REPO / "web" / "proxy.py").read_text())
    answering = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                 and node.name in ("predict", "_translate", "Handler")]
    shown += [node.value for fn in answering for node in ast.walk(fn)
              if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    assert len(shown) > 30 and any("not running" in m for m in shown)
    offending = [m for m in shown if "`" in m or re.search(r"\bmake \w", m)]
    assert not offending, offending
