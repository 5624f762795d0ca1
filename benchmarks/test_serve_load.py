"""The HTTP server under a bounded load over loopback (runs in the plain ``pytest`` run; for the numbers, run
``python benchmarks/serve_load.py``): every answer right or a clean 503, memory flat after the burst."""

from __future__ import annotations

import pytest

from benchmarks.serve_load import ServerProcess, check_answers, request_plan, run_load
from fastmmgan.config import TrainConfig
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.trainer import Trainer

TINY = TrainConfig(steps=1, batch_size=16, z_dim=8, g_width=32, d_width=32, compile=False, device="cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_load")
    Trainer(TINY, out / "run").save()
    return export_generator(out / "run", out / "gen.onnx").path


def test_512_requests_from_32_clients_all_answered_right_and_memory_flat(model):
    generator = OnnxGenerator(model, device="cpu", intra_op_threads=1)
    bodies = request_plan(512)
    with ServerProcess(model, "--max-wait-ms", "2") as server:
        run_load(server.url, request_plan(128), 32)  # warm-up: allocator pools and caches reach their size
        rss_before = server.rss_mib()
        result = run_load(server.url, bodies, 32, timeout=30)
        rss_after = server.rss_mib()
    # 32 clients have at most 32 requests queued, below the default queue of 256: nobody is turned away.
    assert result.count(200) == 512
    assert check_answers(result, bodies, generator) == []
    assert rss_after - rss_before < 16, (rss_before, rss_after)


def test_a_full_queue_answers_503_over_http_and_the_rest_are_right(model):
    """One request per run and a queue of one: while a run is in flight, a second waiting request is refused."""
    generator = OnnxGenerator(model, device="cpu", intra_op_threads=1)
    bodies = [dict(b, n=1) for b in request_plan(96)]
    with ServerProcess(model, "--max-n", "1", "--max-batch", "1", "--max-queue", "1") as server:
        result = run_load(server.url, bodies, 32, params={"modality": "image"}, timeout=30)
    assert result.count(503) > 0 and result.count(200) > 0
    assert result.count(200) + result.count(503) == len(bodies)
    assert check_answers(result, bodies, generator, modality="image") == []
