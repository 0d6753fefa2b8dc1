"""The REST server (`modaltune serve`): answers equal `modaltune predict`'s, limits, errors, batching, /info.

The app runs in-process through starlette's TestClient; tests/test_serve_browser.py runs the real
server (uvicorn, through the CLI) and its page in a browser.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve,serve-test]'")
pytest.importorskip("multipart", reason="the server needs the serve extra (python-multipart)")

from fastapi.testclient import TestClient  # noqa: E402

from modaltune import api  # noqa: E402
from modaltune.serve import ServeLimits, Service, create_app  # noqa: E402
from modaltune.serve.batching import Batcher  # noqa: E402

FAST = ServeLimits(batch_wait_ms=0)


@pytest.fixture(scope="module")
def service(tiny_clip_run: Path) -> Service:
    service = Service.load(tiny_clip_run, limits=FAST)
    yield service
    service.close()


def _client(service: Service, **limits: float) -> TestClient:
    """A client of an app around ``service``'s loaded model with these limits (the model is shared)."""
    limited = Service(service.task, service.loaded, source=service.source, run_root=service.run_root,
                      limits=ServeLimits(**{**FAST.to_dict(), **limits}).check())
    return TestClient(create_app(limited))


def _png(size: tuple[int, int] = (24, 24), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _wav(seconds: float, rate: int = 16000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    png = bytearray(_png((8, 8)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    png[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    png[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(png[ihdr - 4:ihdr + 13])))
    return bytes(png)


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code, error
    return error["message"]


def _images(shape_folder: Path, n: int) -> list[Path]:
    return sorted((shape_folder / "val").rglob("*.png"))[:n]


def test_predict_answers_as_modaltune_predict_does(service, tiny_clip_run, shape_folder):
    [image] = _images(shape_folder, 1)
    expected = api.predict(tiny_clip_run, [str(image)])[0]
    with _client(service) as client:
        multipart = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/png")})
        as_json = client.post("/predict", json={"inputs": [{"file": base64.b64encode(image.read_bytes()).decode(),
                                                            "name": image.name}]})
        data_url = client.post("/predict", json={"file": "data:image/png;base64,"
                                                 + base64.b64encode(image.read_bytes()).decode()})
    for response in (multipart, as_json, data_url):
        assert response.status_code == 200, response.text
        [got] = response.json()["predictions"]
        assert got["label"] == expected["label"]
        assert [t["label"] for t in got["top"]] == [t["label"] for t in expected["top"]]
        assert got["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert multipart.json()["predictions"][0]["input"] == image.name
    assert data_url.json()["predictions"][0]["input"] == "input-0"


def test_health_info_and_openapi(service, tiny_clip_run, tiny_clip):
    metrics = json.loads((tiny_clip_run / "metrics.json").read_text())
    with _client(service) as client:
        assert client.get("/health").json()["status"] == "ok"
        info = client.get("/info").json()
        docs = client.get("/docs")
        spec = client.get("/openapi.json").json()
        page = client.get("/")
    assert info["task"] == "classify" and info["strategy"] == "linear-probe"
    assert info["base_model"] == str(tiny_clip) and info["model"] == str(tiny_clip_run)
    assert info["labels"] == ["circle", "square", "triangle"]
    assert info["metrics"]["accuracy"] == metrics["accuracy"] and info["primary_metric"] == "accuracy"
    assert info["zero_shot"]["accuracy"] == metrics["zero_shot"]["accuracy"]
    assert info["inputs"] == {"media": ["image"], "question": False, "conversation": False, "options": ["labels"]}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert {"/health", "/info"} <= set(spec["paths"])
    assert page.status_code == 200 and 'id="file"' in page.text and "predict" in page.text


def test_docs_page_loads_swagger_ui_from_this_server(service):
    """/docs names no other host: its script and style are served here (offline, behind a firewall)."""
    import re

    pytest.importorskip("swagger_ui_bundle", reason="the serve extra's swagger-ui-bundle-v2 serves /docs' assets")
    with _client(service) as client:
        docs = client.get("/docs")
        assert docs.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', docs.text) + re.findall(r"url: '([^']+)'", docs.text)
        assert "http:" not in docs.text and "https:" not in docs.text, "no URL of another host"
        assets = {url: client.get(url) for url in urls}
        assert client.get("/docs/assets/index.html").status_code == 404, "only the page's own assets are served"
        assert client.get("/redoc").status_code == 404, "ReDoc would need a CDN: not offered"
    kinds = {url.rsplit(".", 1)[-1]: r for url, r in assets.items()}
    assert {"js", "css", "json"} <= set(kinds), urls
    assert all(r.status_code == 200 for r in assets.values()), {u: r.status_code for u, r in assets.items()}
    assert kinds["js"].headers["content-type"].startswith("text/javascript") and len(kinds["js"].content) > 500_000
    assert b"SwaggerUIBundle" in kinds["js"].content
    assert kinds["css"].headers["content-type"].startswith("text/css") and b".swagger-ui" in kinds["css"].content
    assert "/predict" in kinds["json"].json()["paths"]


def test_docs_without_the_swagger_ui_package_falls_back_to_the_cdn_page_and_says_so(service, monkeypatch):
    import logging

    import modaltune.serve.docs as docs

    monkeypatch.setattr(docs, "swagger_ui_folder", lambda: None)
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    docs.logger.addHandler(handler)
    try:
        with _client(service) as client:
            page = client.get("/docs")
            asset = client.get("/docs/assets/swagger-ui.css")
    finally:
        docs.logger.removeHandler(handler)
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text and "https:" in page.text
    assert asset.status_code == 404
    assert any("pip install 'swagger-ui-bundle-v2>=5'" in message for message in said), said


def test_limits_and_bad_uploads_answer_json_errors_and_the_worker_survives(service, shape_folder, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # a client's file name must never become a file here (or anywhere)
    png = _png()
    with _client(service, max_upload_mb=0.01, max_pixels=30 * 30, max_batch=2) as client:
        def post(data: bytes, name: str = "x.png"):
            return client.post("/predict", files={"file": (name, data, "application/octet-stream")})

        message = _error(post(b"\0" * 20_000), 413, "upload_too_large")
        assert "--max-upload-mb" in message
        # a chunked body (no Content-Length) is counted as it arrives
        chunked = client.post("/predict", content=iter([b"{" + b" " * 8000, b" " * 8000 + b"}"]),
                              headers={"content-type": "application/json"})
        _error(chunked, 413, "upload_too_large")
        assert "pixels" in _error(post(_png((40, 40))), 413, "image_too_large")  # over --max-pixels
        _error(post(_bomb_png(60_000, 60_000)), 413, "image_too_large")  # decided from the header alone
        assert "not a file this server can read" in _error(post(b"plain text, not an image", "notes.png"), 415,
                                                           "unsupported_media")
        assert "takes image files" in _error(post(_wav(0.2), "clip.wav"), 415, "wrong_media_kind")
        assert "'cut.png'" in _error(post(png[: len(png) // 2], "cut.png"), 422, "corrupt_image")
        _error(post(b"", "empty.png"), 422, "empty_file")
        _error(client.post("/predict", files=[("file", ("a.png", png)), ("file", ("b.png", png)),
                                              ("file", ("c.png", png))]), 413, "too_many_inputs")
        _error(client.post("/predict", content=b"x", headers={"content-type": "text/plain"}), 415,
               "unsupported_content_type")
        _error(client.post("/predict", json={"labels": ["a", "b"]}), 422, "missing_field")
        _error(client.post("/predict", json={"file": "/etc/passwd"}), 422, "bad_base64")
        _error(client.post("/predict", json=["not", "an", "object"]), 422, "bad_json")
        _error(client.post("/predict", files={"file": ("a.png", png)}, data={"labels": "only-one"}), 422,
               "too_few_labels")
        _error(client.post("/predict", files={"file": ("a.png", png)}, data={"texts": "a,b"}), 422, "unknown_option")
        # after all that, the same server still answers
        assert client.get("/health").json()["status"] == "ok"
        good = post(png, "../../evil.png")
        assert good.status_code == 200, good.text
        assert good.json()["predictions"][0]["input"] == "evil.png"
        assert list(client.app.state.service._tmp.iterdir()) == [], "uploads are deleted once decoded"
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent.parent / "evil.png").exists()


def test_damaged_uploads_never_break_the_server(service):
    """Truncated and bit-flipped images and clips: each answer is a prediction or a JSON 4xx error."""
    rng = np.random.default_rng(0)
    originals = [_png((20, 20)), _wav(0.3), _bomb_png(16, 16)]
    statuses = set()
    with _client(service) as client:
        for i in range(36):
            data = bytearray(originals[i % len(originals)])
            if i % 2:
                data = data[: int(rng.integers(8, len(data)))]
            for _ in range(int(rng.integers(1, 6))):
                at = int(rng.integers(8, len(data)))
                data[at] = int(rng.integers(0, 256))
            response = client.post("/predict", files={"file": (f"f{i}", bytes(data))})
            statuses.add(response.status_code)
            assert response.status_code in (200, 413, 415, 422), response.text
            assert "predictions" in response.json() or response.json()["error"]["code"]
        assert client.get("/health").json()["status"] == "ok"
    assert statuses & {415, 422}, statuses


def test_labels_per_request_classify_zero_shot_over_them(service, shape_folder, tiny_clip):
    [image] = _images(shape_folder, 1)
    expected = api.predict(tiny_clip, [str(image)], task="classify", labels=["red", "green", "blue"])[0]
    with _client(service) as client:
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())},
                          data={"labels": "red, green, blue"}).json()["predictions"][0]
        trained = client.post("/predict", files={"file": ("a.png", image.read_bytes())}).json()["predictions"][0]
    assert [t["label"] for t in got["top"]] == [t["label"] for t in expected["top"]]
    assert got["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert trained["label"] in ("circle", "square", "triangle"), "the run's own head is used without labels"


def test_concurrent_requests_are_batched_and_agree_with_single_ones(service, shape_folder):
    images = _images(shape_folder, 5)
    with _client(service) as client:  # batch_wait_ms 0: one request per model call
        single = [client.post("/predict", files={"file": (p.name, p.read_bytes())}).json() for p in images]
    assert all(answer["batch_size"] == 1 for answer in single)

    answers: dict[int, dict] = {}
    with _client(service, max_batch=5, batch_wait_ms=5000) as client:
        def send(i: int, files: list[Path]) -> None:
            answers[i] = client.post("/predict", files=[("file", (p.name, p.read_bytes())) for p in files]).json()

        # four requests, one of them with two files: five inputs, so the batch closes without waiting
        jobs = [[images[0]], [images[1], images[2]], [images[3]], [images[4]]]
        threads = [threading.Thread(target=send, args=(i, files)) for i, files in enumerate(jobs)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        waited = time.perf_counter() - started
        assert client.app.state.batcher.batch_sizes == [5]
    assert waited < 5, "a full batch does not wait for --batch-wait-ms"
    batched = [p for i in range(len(jobs)) for p in answers[i]["predictions"]]
    assert all(answers[i]["batch_size"] == 5 for i in range(len(jobs)))
    for one, many in zip([a["predictions"][0] for a in single], batched):
        assert one["input"] == many["input"] and one["label"] == many["label"]
        for a, b in zip(one["top"], many["top"]):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_timeout_and_busy_answers(service):
    png = _png()
    with _client(service, timeout=0.05, batch_wait_ms=2000) as client:
        assert "--timeout" in _error(client.post("/predict", files={"file": ("a.png", png)}), 504, "timeout")
        assert client.get("/health").json()["status"] == "ok"
    with _client(service, max_pending=1, batch_wait_ms=2500) as client:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(r=client.post("/predict", files={"file": ("a", png)})))
        thread.start()
        deadline = time.time() + 10
        while client.get("/health").json()["pending"] < 1 and time.time() < deadline:
            time.sleep(0.02)
        _error(client.post("/predict", files={"file": ("b.png", png)}), 503, "busy")
        thread.join(30)
        assert first["r"].status_code == 200


def test_vqa_needs_a_question_and_answers_it(tiny_vilt, shape_folder):
    [image] = _images(shape_folder, 1)
    service = Service.load(tiny_vilt, task="vqa", limits=FAST)
    expected = api.predict(tiny_vilt, [str(image)], task="vqa", question="what shape is it?")[0]
    with TestClient(create_app(service)) as client:
        assert client.get("/info").json()["inputs"]["question"] is True
        _error(client.post("/predict", files={"file": ("a.png", image.read_bytes())}), 422, "missing_field")
        _error(client.post("/predict", files={"file": ("a.png", image.read_bytes())}, data={"question": "  "}), 422,
               "empty_question")
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())},
                          data={"question": "what shape is it?"}).json()["predictions"][0]
    service.close()
    assert got["answer"] == expected["answer"] and got["question"] == "what shape is it?"


def test_retrieve_ranks_the_texts_of_the_request(tiny_clip, shape_folder):
    [image] = _images(shape_folder, 1)
    texts = ["a red circle", "a blue square", "a green triangle"]
    expected = api.predict(tiny_clip, [str(image)], task="retrieve", texts=texts)[0]
    service = Service.load(tiny_clip, task="retrieve", limits=FAST)
    with TestClient(create_app(service)) as client:
        assert client.get("/info").json()["inputs"]["options"] == ["texts"]
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())},
                          data={"texts": "\n".join(texts)}).json()["predictions"][0]
        embedding = client.post("/predict", files={"file": ("a.png", image.read_bytes())}).json()["predictions"][0]
    service.close()
    assert [t["text"] for t in got["top"]] == [t["text"] for t in expected["top"]]
    assert got["score"] == pytest.approx(expected["score"], abs=1e-5)
    assert len(embedding["embedding"]) == 32, "without candidate texts, the image's embedding"


def test_caption_writes_the_caption_predict_writes(tiny_git, shape_folder):
    [image] = _images(shape_folder, 1)
    expected = api.predict(tiny_git, [str(image)], task="caption")[0]
    service = Service.load(tiny_git, task="caption", limits=FAST)
    with TestClient(create_app(service)) as client:
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())}).json()["predictions"][0]
    service.close()
    assert got["caption"] == expected["caption"]


def test_detect_answers_boxes_with_the_servers_threshold_and_the_requests_labels(tiny_owlv2, shape_folder):
    [image] = _images(shape_folder, 1)
    labels, asked = ["red circle", "blue square"], ["green triangle", "yellow star", "red circle"]
    # threshold 0: the random tiny detector's boxes all count, so there are boxes to compare
    options = {"task": "detect", "threshold": 0.0, "max_detections": 5}
    expected = api.predict(tiny_owlv2, [str(image)], labels=labels, **options)[0]
    expected_asked = api.predict(tiny_owlv2, [str(image)], labels=asked, **options)[0]
    service = Service.load(tiny_owlv2, labels=labels, limits=FAST, **options)
    with TestClient(create_app(service)) as client:
        assert client.get("/info").json()["labels"] == labels
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())}).json()["predictions"][0]
        got_asked = client.post("/predict", files={"file": ("a.png", image.read_bytes())},
                                data={"labels": ", ".join(asked)}).json()["predictions"][0]
        one = client.post("/predict", files={"file": ("a.png", image.read_bytes())}, data={"labels": "red circle"})
    service.close()
    for answer, reference in ((got, expected), (got_asked, expected_asked)):
        assert len(answer["boxes"]) == 5 and answer["labels"] == reference["labels"]
        np.testing.assert_allclose(answer["boxes"], reference["boxes"], atol=1e-3)
        np.testing.assert_allclose(answer["scores"], reference["scores"], atol=1e-5)
    assert set(got_asked["labels"]) <= set(asked)
    assert one.status_code == 200, "one label is a question a detector can answer"


def test_grounding_dino_answers_boxes_as_predict_does(tiny_grounding_dino, detect_scenes):
    """The phrase-prompted detector: per-request labels make a new prompt, answers equal `predict`'s."""
    image = sorted((detect_scenes.parent / "images").glob("*.png"))[0]
    options = {"task": "detect", "threshold": 0.0, "max_detections": 4}
    asked = ["green triangle", "yellow star"]
    expected = api.predict(tiny_grounding_dino, [str(image)], labels=["red circle", "blue square"], **options)[0]
    expected_asked = api.predict(tiny_grounding_dino, [str(image)], labels=asked, **options)[0]
    service = Service.load(tiny_grounding_dino, labels=["red circle", "blue square"], limits=FAST, **options)
    with TestClient(create_app(service)) as client:
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())}).json()["predictions"][0]
        got_asked = client.post("/predict", json={"file": base64.b64encode(image.read_bytes()).decode(),
                                                  "labels": asked}).json()["predictions"][0]
    service.close()
    for answer, reference in ((got, expected), (got_asked, expected_asked)):
        assert len(answer["boxes"]) == len(answer["labels"]) == len(answer["scores"]) == 4
        assert answer["labels"] == reference["labels"]
        np.testing.assert_allclose(answer["boxes"], reference["boxes"], atol=1e-3)
        np.testing.assert_allclose(answer["scores"], reference["scores"], atol=1e-5)
    assert set(got_asked["labels"]) <= set(asked)


def test_chat_answers_a_question_or_a_conversation_about_the_image(tiny_llava, shape_folder):
    [image] = _images(shape_folder, 1)
    question = "What colour is the shape?"
    expected = api.predict(tiny_llava, [str(image)], task="chat", question=question, max_new_tokens=6)[0]
    service = Service.load(tiny_llava, task="chat", limits=FAST, max_new_tokens=6)
    as_messages = [{"role": "user", "content": f"<image>\n{question}"}]
    two_images = [{"from": "human", "value": f"<image>\n<image>\n{question}"}]
    answered = [*as_messages, {"role": "assistant", "content": "Red."}]
    with TestClient(create_app(service)) as client:
        inputs = client.get("/info").json()["inputs"]
        got = client.post("/predict", files={"file": ("a.png", image.read_bytes())}, data={"question": question})
        conversation = client.post("/predict", json={"file": base64.b64encode(image.read_bytes()).decode(),
                                                     "conversation": as_messages})
        _error(client.post("/predict", files={"file": ("a.png", image.read_bytes())}), 422, "missing_field")
        _error(client.post("/predict", files={"file": ("a.png", image.read_bytes())},
                           data={"conversation": json.dumps(two_images)}), 422, "image_placeholder_mismatch")
        _error(client.post("/predict", files={"file": ("a.png", image.read_bytes())},
                           data={"conversation": json.dumps(answered)}), 422, "bad_role_order")
        _error(client.post("/predict", files={"file": ("a.wav", _wav(0.2))}, data={"question": question}), 415,
               "wrong_media_kind")
    service.close()
    assert inputs == {"media": ["image"], "question": True, "conversation": True, "options": []}
    assert got.status_code == 200, got.text
    assert got.json()["predictions"][0] == {"input": "a.png", "answer": expected["answer"]}
    assert expected["answer"], "the tiny model generates something to compare"
    assert conversation.status_code == 200 and conversation.json()["predictions"][0]["answer"] == expected["answer"]

    # two questions of different lengths about images of different sizes, generated in one batch
    other = _png((40, 28), (30, 30, 200))
    jobs = [(image.read_bytes(), question), (other, "How many shapes are there in this picture?")]
    with _client(service) as client:
        single = [client.post("/predict", files={"file": ("a.png", data)}, data={"question": q}).json()
                  for data, q in jobs]
    answers: dict[int, dict] = {}
    with _client(service, max_batch=2, batch_wait_ms=5000) as client:
        def send(i: int) -> None:
            data, q = jobs[i]
            answers[i] = client.post("/predict", files={"file": ("a.png", data)}, data={"question": q}).json()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert client.app.state.batcher.batch_sizes == [2]
    assert [answers[i]["predictions"] for i in range(2)] == [a["predictions"] for a in single]


def test_audio_model_limits_clip_length(tiny_clap):
    service = Service.load(tiny_clap, task="classify", labels=["tone", "noise"],
                           limits=ServeLimits(batch_wait_ms=0, max_audio_seconds=1.0))
    with TestClient(create_app(service)) as client:
        assert client.get("/info").json()["inputs"]["media"] == ["audio"]
        # 1 s, the tiny CLAP's own length (its feature extractor's float max length breaks padding shorter clips)
        ok = client.post("/predict", files={"file": ("tone.wav", _wav(1.0))})
        assert ok.status_code == 200, ok.text
        assert ok.json()["predictions"][0]["label"] in ("tone", "noise")
        assert "'long.wav'" in _error(client.post("/predict", files={"file": ("long.wav", _wav(2.0))}), 413,
                                      "audio_too_long")
        _error(client.post("/predict", files={"file": ("a.png", _png())}), 415, "wrong_media_kind")
    service.close()


def test_batcher_groups_by_options_and_isolates_a_failing_job():
    calls: list[tuple[str, list[int]]] = []

    def runner(key, items):
        calls.append((key, list(items)))
        if -1 in items:
            raise ValueError("bad input")
        return [i * 10 for i in items]

    async def scenario(*jobs):
        batcher = Batcher(runner, max_batch=4, wait_s=0.2)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(key, items) for key, items in jobs), return_exceptions=True)
        finally:
            await batcher.stop()

    # jobs with the same options share a batch (in arrival order); others wait for their own
    assert asyncio.run(scenario(("a", [1]), ("b", [2]), ("a", [3, 5]))) == [([10], 3), ([20], 1), ([30, 50], 3)]
    assert calls == [("a", [1, 3, 5]), ("b", [2])]
    # a failing batch is rerun job by job: only the job holding the bad input fails
    calls.clear()
    one, bad, four = asyncio.run(scenario(("a", [1]), ("a", [3, -1]), ("a", [4])))
    assert one == ([10], 1) and four == ([40], 1) and isinstance(bad, ValueError)
    assert calls == [("a", [1, 3, -1, 4]), ("a", [1]), ("a", [3, -1]), ("a", [4])]


def test_cli_serve_reports_bad_usage(run_cli, tmp_path):
    result = run_cli("serve", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a modaltune model" in result.stderr
    result = run_cli("serve", str(tmp_path), "--task", "classify", "--max-batch", "0")
    assert result.returncode == 2 and "--max-batch" in result.stderr
    help_text = run_cli("serve", "--help").stdout
    for option in ("--max-upload-mb", "--max-batch", "--batch-wait-ms", "--timeout", "--labels", "--port"):
        assert option in help_text
