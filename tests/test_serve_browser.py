"""The server's web page in a real headless browser: `modaltune serve` on a free port, Chromium driven by Playwright.

Chromium comes from the OS packages (`make browser` installs it where it may); Playwright's own
browser download needs its CDN, which is not always reachable. Without a browser the test is skipped
and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[serve-test]'")
pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
try:
    import httpx2 as httpx
except ImportError:  # Python 3.10: httpx
    httpx = pytest.importorskip("httpx", reason="needs httpx2 (or httpx): pip install -e '.[serve-test]'")

pytestmark = pytest.mark.slow

#: Where the screenshots go besides the test's tmp dir (e.g. a CI artifacts folder), when set.
ARTIFACTS = os.environ.get("MODALTUNE_TEST_ARTIFACTS")
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium(playwright) -> str | None:
    """A Chromium to drive: $MODALTUNE_CHROMIUM, the OS package's, else Playwright's own download."""
    for name in (os.environ.get("MODALTUNE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) if name else None
        if found:
            return found
    bundled = playwright.chromium.executable_path
    return bundled if bundled and Path(bundled).is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(model: Path, log: Path, *options: str) -> Iterator[str]:
    """`modaltune serve MODEL OPTIONS` in a subprocess: the CLI, uvicorn and the app as a user runs them."""
    port = _free_port()
    src = str(Path(__file__).resolve().parents[1] / "src")  # a checkout without `pip install -e .` too
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "modaltune.cli", "serve", str(model), "--port", str(port),
                                    "--batch-wait-ms", "0", *options], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"modaltune serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"modaltune serve did not answer within 120 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tiny_clip_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serving(tiny_clip_run, tmp_path_factory.mktemp("serve-log") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def detect_server(tiny_owlv2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A zero-shot OWLv2 (random tiny weights: threshold 0, so its best boxes are kept)."""
    with _serving(tiny_owlv2, tmp_path_factory.mktemp("serve-log") / "detect.log", "--task", "detect", "--labels",
                  "red circle,blue square", "--threshold", "0", "--max-detections", "3") as url:
        yield url


@pytest.fixture()
def browser():
    with sync_api.sync_playwright() as playwright:
        executable = _chromium(playwright)
        if executable is None:
            pytest.skip("no Chromium: install the OS package (`make browser`, or apt-get install chromium) or "
                        "`playwright install chromium`")
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _screenshot(page, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(ARTIFACTS) / path.name)
    return path


def _shown(page) -> dict:
    """What the page shows: the headline, the bars (name, score) and the JSON answer it received."""
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    bars = page.eval_on_selector_all("#bars .bar", "els => els.map(e => [e.dataset.name, Number(e.dataset.score)])")
    return {"answer": page.text_content("#answer"), "bars": [tuple(b) for b in bars],
            "raw": json.loads(page.text_content("#raw") or "{}")}


def test_page_shows_the_prediction_of_predict_and_the_error_of_a_bad_upload(server, browser, shape_folder, tmp_path):
    image = sorted((shape_folder / "val").rglob("*.png"))[0]
    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is not an image")
    expected = httpx.post(server + "predict", files={"file": (image.name, image.read_bytes(), "image/png")},
                          timeout=60).json()["predictions"][0]
    relabelled = httpx.post(server + "predict", files={"file": (image.name, image.read_bytes(), "image/png")},
                            data={"labels": "red, blue"}, timeout=60).json()["predictions"][0]

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server)
    page.wait_for_function("document.getElementById('title').textContent.includes('classify')")
    card = page.text_content("#card") or ""
    assert "linear-probe" in card and "circle, square, triangle" in card and "accuracy" in card

    page.set_input_files("#file", str(image))
    page.click("#submit")
    shown = _shown(page)
    _screenshot(page, tmp_path / "serve-page-prediction.png")
    assert shown["raw"]["predictions"][0] == expected, "the page shows what POST /predict answers"
    assert shown["answer"] == expected["label"]
    assert shown["bars"] == [(t["label"], t["score"]) for t in expected["top"]]

    page.fill("#labels", "red, blue")  # zero-shot over typed labels
    page.click("#submit")
    page.wait_for_function("document.querySelectorAll('#bars .bar').length === 2")
    shown = _shown(page)
    assert shown["raw"]["predictions"][0] == relabelled
    assert shown["bars"] == [(t["label"], t["score"]) for t in relabelled["top"]]

    page.set_input_files("#file", str(not_image))
    page.click("#submit")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    error = page.text_content("#error") or ""
    _screenshot(page, tmp_path / "serve-page-error.png")
    assert "not a file this server can read" in error and "415" in error
    assert page.is_hidden("#result")

    # /docs with every request to another host refused: Swagger UI comes from this server
    offsite: list[str] = []
    docs = browser.new_page(viewport={"width": 1100, "height": 800})
    docs.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
               else (offsite.append(route.request.url), route.abort()))
    docs.goto(server + "docs")
    docs.wait_for_selector('.opblock-summary-path[data-path="/predict"]', state="visible", timeout=30_000)
    assert docs.is_visible('.opblock-summary-path[data-path="/info"]')
    _screenshot(docs, tmp_path / "serve-docs.png")
    assert offsite == [], f"/docs asked another host: {offsite}"
    for name in ("serve-page-prediction.png", "serve-page-error.png", "serve-docs.png"):
        assert (tmp_path / name).stat().st_size > 10_000, "a screenshot of the page was saved"
    print(f"screenshots: {tmp_path}")


def test_page_draws_the_boxes_of_a_detector(detect_server, browser, detect_scenes, tmp_path):
    image = sorted((detect_scenes.parent / "images").glob("*.png"))[0]
    expected = httpx.post(detect_server + "predict", files={"file": (image.name, image.read_bytes(), "image/png")},
                          timeout=60).json()["predictions"][0]
    assert len(expected["boxes"]) == 3, expected

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(detect_server)
    page.wait_for_function("document.getElementById('title').textContent.includes('detect')")
    page.set_input_files("#file", str(image))
    page.click("#submit")
    shown = _shown(page)
    assert shown["raw"]["predictions"][0] == expected and shown["answer"] == "3 boxes"
    page.wait_for_function("document.getElementById('overlay').dataset.boxes === '3'")
    red = page.evaluate("""() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 100 && d[i + 3] > 0) n++;
        return [n, c.width, c.height]; }""")
    _screenshot(page, tmp_path / "serve-page-boxes.png")
    assert red[0] > 100 and red[1] >= 192, f"the boxes are drawn over the (scaled-up) image: {red}"
    assert (tmp_path / "serve-page-boxes.png").stat().st_size > 10_000
