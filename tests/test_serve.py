"""The HTTP server end to end: health, metadata, generation as JSON/PNG/WAV, bad requests, micro-batching."""

import asyncio
import io
import json
import re
import signal
import subprocess
import sys
import threading
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fastmmgan.cli import run_cli
from fastmmgan.config import TrainConfig
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.export import server as serve
from fastmmgan.export.server import MicroBatcher, ServeLimits, ServerBusy, create_app
from fastmmgan.media import image_grid

TINY = TrainConfig(steps=1, batch_size=16, z_dim=8, g_width=32, d_width=32, compile=False, device="cpu")
LIMITS = ServeLimits(max_n=16, max_batch=48, max_wait_ms=20.0, max_queue=64, max_body_bytes=64 << 10)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_path(tiny_run, tmp_path_factory):
    return export_generator(tiny_run, tmp_path_factory.mktemp("serve") / "gen.onnx").path


@pytest.fixture(scope="module")
def generator(model_path):
    return OnnxGenerator(model_path, device="cpu")


@pytest.fixture(scope="module")
def client(generator):
    with TestClient(create_app(generator, LIMITS)) as c:
        yield c


def _assert_same_samples(got, expected):
    assert got.keys() == expected.keys()
    np.testing.assert_allclose(np.asarray(got["image"]), expected["image"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["audio"]), expected["audio"], atol=1e-4)
    assert got["text"] == list(expected["text"])


def test_health_and_metadata(client, generator):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["provider"] == "CPUExecutionProvider"
    meta = client.get("/metadata").json()
    assert [(m["name"], m["kind"], m["dim"]) for m in meta["modalities"]] == [
        (s.name, s.kind, s.dim) for s in generator.modalities
    ]
    assert meta["modalities"][1]["vocab"] == list(generator.modalities[1].vocab)
    assert meta["z_dim"] == TINY.z_dim and meta["config_hash"] == TINY.model_hash()
    assert meta["limits"]["max_n"] == LIMITS.max_n


def test_generate_json_matches_direct_sampling(client, generator):
    given = {"text": ["the number 7", "digit three", "a handwritten zero"]}
    r = client.post("/generate", json={"n": 3, "given": given, "seed": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["n"] == 3 and body["seed"] == 5
    assert np.asarray(body["outputs"]["image"]).shape == (3, 8, 8)
    assert np.asarray(body["outputs"]["audio"]).shape == (3, 1024)
    assert body["outputs"]["text"] == given["text"]
    _assert_same_samples(body["outputs"], generator.sample(3, given, seed=5))


def test_missing_seed_is_drawn_and_returned(client):
    first = client.post("/generate", json={"n": 2, "given": {"text": "nine"}}).json()
    again = client.post("/generate", json={"n": 2, "given": {"text": "nine"}, "seed": first["seed"]}).json()
    assert again["outputs"] == first["outputs"]


def test_modality_option_returns_one_modality(client, generator):
    r = client.post("/generate?modality=text", json={"n": 4, "seed": 2})
    assert r.status_code == 200 and set(r.json()["outputs"]) == {"text"}
    assert r.json()["outputs"]["text"] == generator.sample(4, seed=2)["text"]


def test_generate_png_grid(client, generator):
    r = client.post("/generate?format=png", json={"n": 5, "seed": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "3"
    picture = Image.open(io.BytesIO(r.content))
    expected = image_grid(generator.sample(5, seed=3)["image"])
    assert picture.size == expected.size and np.array_equal(np.asarray(picture), np.asarray(expected))


def test_generate_wav_clips(client, generator):
    r = client.post("/generate?format=wav&modality=audio", json={"n": 3, "seed": 4})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getnframes() == 3 * 1024 + 2 * 800
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    clips = generator.sample(3, seed=4)["audio"]
    np.testing.assert_allclose(pcm[:1024] / 32767, clips[0], atol=2e-4)
    assert not pcm[1024:1824].any()


BAD_REQUESTS = [
    ("", b"{bad json", 400, "malformed JSON"),
    ("", b"[1, 2]", 400, "must be a JSON object"),
    ("", b'{"n": 0}', 422, "n: Input should be greater than or equal to 1"),
    ("", b'{"n": 2.5}', 422, "n: Input should be a valid integer"),
    ("", b'{"given": {}}', 422, "n: Field required"),
    ("", b'{"n": 17}', 422, "limit of 16 samples"),
    ("", b'{"n": 1, "sed": 1}', 422, "sed: Extra inputs are not permitted"),
    ("", b'{"n": 1, "seed": -1}', 422, "seed: Input should be greater than or equal to 0"),
    ("", b'{"n": 1, "given": {"video": [1]}}', 422, "unknown modality 'video'"),
    ("", b'{"n": 2, "given": {"text": ["a", "b", "c"]}}', 422, "3 captions for n=2"),
    ("", b'{"n": 1, "given": {"text": "zebra crossing"}}', 422, "not in the vocabulary: crossing, zebra"),
    ("", b'{"n": 1, "given": {"text": 7}}', 422, "expected a string or a list of strings"),
    ("", b'{"n": 1, "given": {"image": [[0.5, 0.5]]}}', 422, "expected images of shape [n, 8, 8]"),
    ("", json.dumps({"n": 1, "given": {"image": [[2.0] * 8] * 8}}).encode(), 422, "must be in [0, 1]"),
    ("", b'{"n": 2, "given": {"audio": [[0.1], [0.2], [0.3]]}}', 422, "3 items for n=2"),
    ("", json.dumps({"n": 1, "given": {"image": [[float("nan")] * 8] * 8}}).encode(), 422, "NaN or infinite"),
    ("?format=gif", b'{"n": 1}', 422, "unknown format 'gif'"),
    ("?format=png&modality=text", b'{"n": 1}', 422, "format png needs an image modality"),
    ("?modality=smell", b'{"n": 1}', 422, "unknown modality 'smell'"),
    ("", b'{"n": 1, "pad": "' + b"x" * (70 << 10) + b'"}', 413, "exceeds the limit of 65536 bytes"),
]


@pytest.mark.parametrize("query, body, status, message", BAD_REQUESTS, ids=[m for *_, m in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(client, query, body, status, message):
    r = client.post("/generate" + query, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert message in r.json()["detail"]
    assert client.post("/generate", json={"n": 1, "seed": 0}).status_code == 200


def test_burst_of_concurrent_requests_is_micro_batched(client, generator):
    stats_before = client.get("/health").json()
    jobs = [(1 + i % 4, i, {"text": "digit seven"} if i % 3 == 0 else None) for i in range(32)]

    def call(job):
        n, seed, given = job
        return client.post("/generate", json={"n": n, "seed": seed, "given": given})

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(call, jobs))
    assert [r.status_code for r in responses] == [200] * 32
    for (n, seed, given), r in zip(jobs, responses, strict=True):
        body = r.json()
        assert body["seed"] == seed and len(body["outputs"]["text"]) == n
        _assert_same_samples(body["outputs"], generator.sample(n, given, seed=seed))
    stats = client.get("/health").json()
    runs = stats["runs"] - stats_before["runs"]
    assert stats["requests"] - stats_before["requests"] == 32
    assert runs < 32 and stats["largest_batch"] > 4
    assert stats["largest_batch"] <= LIMITS.max_batch and stats["queued"] == 0


def _fake_runner(log, started=None, gate=None):
    def run(z, xs, mask):
        if gate is not None:
            started.set()
            gate.wait(10)
        log.append(len(z))
        return [z * 2, *(x + 1 for x in xs)]

    return run


def _inputs(rows, value):
    """A fake request's inputs: z [rows, 2], one feature array [rows, 3], mask [rows, 1]."""
    z, x = np.full((rows, 2), value, np.float32), np.full((rows, 3), value, np.float32)
    return [z, x, np.ones((rows, 1), np.float32)]


def test_micro_batcher_never_splits_a_request_or_exceeds_max_batch():
    sizes = []

    async def scenario():
        batcher = MicroBatcher(_fake_runner(sizes), max_batch=8, max_wait_ms=50, max_queue=32)
        await batcher.start()
        rows = [3, 5, 2, 4, 4, 1, 8]
        outs = await asyncio.gather(*(batcher.submit(_inputs(r, i)) for i, r in enumerate(rows)))
        await batcher.stop()
        return rows, outs

    rows, outs = asyncio.run(scenario())
    for i, (r, out) in enumerate(zip(rows, outs, strict=True)):
        assert out[0].shape == (r, 2) and (out[0] == 2 * i).all() and (out[1] == i + 1).all()
    assert sum(sizes) == sum(rows) and max(sizes) <= 8 and len(sizes) < len(rows)


def test_micro_batcher_refuses_when_the_queue_is_full():
    started, gate = threading.Event(), threading.Event()

    async def scenario():
        batcher = MicroBatcher(_fake_runner([], started, gate), max_batch=1, max_wait_ms=0, max_queue=1)
        await batcher.start()
        running = asyncio.ensure_future(batcher.submit(_inputs(1, 0)))
        while not started.is_set():
            await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(batcher.submit(_inputs(1, 1)))
        while not batcher.stats()["queued"]:
            await asyncio.sleep(0.001)
        with pytest.raises(ServerBusy, match="1 requests already queued"):
            await batcher.submit(_inputs(1, 2))
        gate.set()
        results = await asyncio.gather(running, waiting)
        await batcher.stop()
        return results

    first, second = asyncio.run(scenario())
    assert (first[1] == 1).all() and (second[1] == 2).all()


def test_micro_batcher_hands_a_failed_run_to_its_requests_and_keeps_serving():
    calls = []

    def flaky(z, xs, mask):
        calls.append(len(z))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return [z, *xs]

    async def scenario():
        batcher = MicroBatcher(flaky, max_batch=8, max_wait_ms=20, max_queue=8)
        await batcher.start()
        failed = await asyncio.gather(*(batcher.submit(_inputs(1, i)) for i in range(3)), return_exceptions=True)
        after = await batcher.submit(_inputs(2, 7))
        await batcher.stop()
        return failed, after

    failed, after = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) and str(e) == "device lost" for e in failed)
    assert calls == [3, 2] and (after[0] == 7).all()


def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: serve.main(argv))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_start_up_errors_are_one_line_and_exit_2(model_path, tmp_path, capsys):
    assert "ONNX model not found" in _cli_error([str(tmp_path / "none.onnx")], capsys)
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(b"garbage")
    assert "not a loadable ONNX model" in _cli_error([str(corrupt)], capsys)
    assert "max-n must be positive" in _cli_error([str(model_path), "--max-n", "0"], capsys)
    assert "must not exceed max-batch" in _cli_error([str(model_path), "--max-n", "64", "--max-batch", "8"], capsys)
    assert "--port must be in 0-65535" in _cli_error([str(model_path), "--port", "70000"], capsys)
    with serve.bind_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in _cli_error([str(model_path), "--port", str(port)], capsys)


def test_server_process_on_loopback(model_path, generator):
    """The real CLI on 127.0.0.1; SIGTERM shuts it down gracefully, then uvicorn re-raises the signal."""
    cmd = [sys.executable, "-m", "fastmmgan.serve", str(model_path), "--host", "127.0.0.1", "--port", "0",
           "--max-wait-ms", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+) \(CPUExecutionProvider\)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        with httpx.Client(base_url=match.group(1), timeout=30) as http:
            assert http.get("/health").json()["status"] == "ok"
            body = http.post("/generate", json={"n": 2, "seed": 9, "given": {"text": "digit four"}}).json()
            _assert_same_samples(body["outputs"], generator.sample(2, {"text": "digit four"}, seed=9))
            assert http.post("/generate", content=b"{").status_code == 400
            assert http.get("/health").status_code == 200
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
    assert "Application shutdown complete" in log
    assert proc.returncode == -signal.SIGTERM


# An RGB image model (tiny_colour_run: photo [4, 6, 3], caption).


@pytest.fixture(scope="module")
def colour_generator(tiny_colour_run, tmp_path_factory):
    return OnnxGenerator(export_generator(tiny_colour_run, tmp_path_factory.mktemp("colour") / "colour.onnx").path,
                         device="cpu")


@pytest.fixture(scope="module")
def colour_client(colour_generator):
    with TestClient(create_app(colour_generator, LIMITS)) as c:
        yield c


def test_colour_model_answers_rgb_images_as_json_and_png(colour_client, colour_generator):
    meta = colour_client.get("/metadata").json()
    assert meta["modalities"][0] == {"name": "photo", "kind": "image", "image_shape": [4, 6], "n_fft": 256, "hop": 128,
                                     "channels": 3, "dim": 72}
    expected = colour_generator.sample(3, {"caption": "red left"}, seed=6)["photo"]
    body = colour_client.post("/generate", json={"n": 3, "given": {"caption": "red left"}, "seed": 6}).json()
    np.testing.assert_allclose(np.asarray(body["outputs"]["photo"]), expected, atol=1e-6)
    assert np.asarray(body["outputs"]["photo"]).shape == (3, 4, 6, 3)
    r = colour_client.post("/generate?format=png", json={"n": 3, "given": {"caption": "red left"}, "seed": 6})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(r.content))
    grid = image_grid(expected)
    assert picture.mode == "RGB" and picture.size == grid.size == ((2 * (6 + 1) + 1) * 4, (2 * (4 + 1) + 1) * 4)  # 2 x 2 tiles
    assert np.array_equal(np.asarray(picture), np.asarray(grid))


def test_colour_model_takes_a_given_rgb_image(colour_client, colour_generator):
    img = np.zeros((4, 6, 3), np.float32)
    img[:, :3, 0] = 1.0
    img[:, 3:, 2] = 1.0
    r = colour_client.post("/generate?format=png&modality=photo", json={"n": 1, "given": {"photo": img.tolist()}})
    px = np.asarray(Image.open(io.BytesIO(r.content)))
    assert px[4, 4].tolist() == [255, 0, 0] and px[4, 4 * 6].tolist() == [0, 0, 255] and px[0, 0].tolist() == [128] * 3
    body = colour_client.post("/generate", json={"n": 2, "given": {"photo": img.tolist()}, "seed": 1}).json()
    assert body["outputs"]["photo"] == [img.tolist()] * 2
    assert body["outputs"]["caption"] == colour_generator.sample(2, {"photo": img}, seed=1)["caption"]
    r = colour_client.post("/generate", json={"n": 1, "given": {"photo": img[..., 0].tolist()}})
    assert r.status_code == 422 and "expected images of shape [n, 4, 6, 3]" in r.json()["detail"]
