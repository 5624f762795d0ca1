"""The Open Inference Protocol (KServe v2) routes, end to end: the real server process, spoken to by Triton's own
HTTP client (``tritonclient.http``), answers like ``OnnxGenerator.run`` and describes the model as the Triton
repository written by ``python -m fastmmgan.export --triton-repo`` does, so one client serves both."""

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from fastmmgan.cli import run_cli
from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.export import server as serve
from fastmmgan.export.server import ServeLimits, create_app
from fastmmgan.sampler import draw_noise, encode_conditions

MODEL = "digits"  # the exported file's stem
MAX_ROWS = 8
CAPTIONS = ["digit seven", "the number 3", "a handwritten zero"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """One export: the served .onnx file and, next to it, its Triton model repository."""
    out = tmp_path_factory.mktemp("oip")
    return export_generator(tiny_run, out / f"{MODEL}.onnx", triton_repo=out / "repo")


@pytest.fixture(scope="module")
def generator(exported):
    return OnnxGenerator(exported.path, device="cpu")


@pytest.fixture(scope="module")
def server(exported):
    """The real CLI on loopback; yields ``host:port`` (tritonclient's form of a URL)."""
    cmd = [sys.executable, "-m", "fastmmgan.serve", str(exported.path), "--host", "127.0.0.1", "--port", "0",
           "--threads", "1", "--max-n", str(MAX_ROWS), "--max-wait-ms", "20", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(rf"on http://(127\.0\.0\.1:\d+) .*Open Inference Protocol model '{MODEL}'", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server, concurrency=16, connection_timeout=30, network_timeout=30)
    yield c
    c.close()


def graph_inputs(generator, n, seed, given=None):
    """z, per-modality features and mask for ``n`` rows, as the library's own sampler builds them."""
    xs, mask, _ = encode_conditions(generator.modalities, n, given)
    return draw_noise(n, generator.z_dim, seed).numpy(), [x.numpy() for x in xs], mask.float().numpy()


def infer_inputs(names_and_arrays, binary=()):
    """Client code that works against a Triton server as well: JSON tensors, but binary tensor data (the client's
    default) for the inputs named in ``binary`` (True: all)."""
    inputs = []
    for name, array in names_and_arrays:
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32), binary_data=binary is True or name in binary)
        inputs.append(tensor)
    return inputs


def all_inputs(generator, z, xs, mask, binary=()):
    return infer_inputs(zip(generator.input_names, [z, *xs, mask], strict=True), binary)


def assert_outputs(result, expected, binary):
    """Each output of ``result`` as ``expected`` says (name -> array), sent as binary data or as JSON as ``binary``
    says, and equal to ``expected``."""
    for name, want in expected.items():
        sent = result.get_output(name)
        if binary:
            assert sent["parameters"] == {"binary_data_size": 4 * want.size} and "data" not in sent
        else:
            assert "parameters" not in sent and len(sent["data"]) == want.size
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("gen") and not client.is_model_ready(MODEL, "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "fastmmgan" and meta["extensions"] == ["binary_tensor_data"] and meta["version"]


def test_model_metadata_is_the_onnx_graphs(client, generator):
    meta = client.get_model_metadata(MODEL)
    assert client.get_model_metadata(MODEL, "1") == meta
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    for declared, graph in ((meta["inputs"], generator.session.get_inputs()), (meta["outputs"], generator.session.get_outputs())):
        assert [(t["name"], t["datatype"], t["shape"]) for t in declared] == [
            (g.name, {"tensor(float)": "FP32"}[g.type], [-1 if isinstance(d, str) else d for d in g.shape]) for g in graph
        ]


def _triton_tensors(section):
    return [(name, dtype, [int(d) for d in dims.split(",")])
            for name, dtype, dims in re.findall(r'name: "(\w+)"\s+data_type: TYPE_(\w+)\s+dims: \[([\d, ]+)\]', section)]


def test_model_metadata_agrees_with_the_triton_repository(client, exported):
    """What Triton would report for the repository written with the same export: names, datatypes, dims (its
    batch axis is implicit with max_batch_size > 0, reported as -1)."""
    config = (exported.triton_model / "config.pbtxt").read_text()
    assert (exported.triton_model / "1" / "model.onnx").read_bytes() == exported.path.read_bytes()
    assert re.search(r'^name: "(\w+)"', config).group(1) == MODEL
    assert int(re.search(r"max_batch_size: (\d+)", config).group(1)) > 0
    inputs_text, outputs_text = config.split("output [")
    expected = {"inputs": _triton_tensors(inputs_text), "outputs": _triton_tensors(outputs_text)}
    meta = client.get_model_metadata(MODEL)
    for key in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta[key]] == [
            (name, dtype, [-1, *dims]) for name, dtype, dims in expected[key]
        ]


def test_infer_matches_onnx_runtime(client, generator):
    z, xs, mask = graph_inputs(generator, 3, seed=11, given={"text": CAPTIONS})
    wanted = [triton.InferRequestedOutput(name, binary_data=False) for name in generator.output_names]
    result = client.infer(MODEL, all_inputs(generator, z, xs, mask), outputs=wanted, request_id="req-1")
    answer = result.get_response()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (MODEL, "1", "req-1")
    for name, expected in zip(generator.output_names, generator.run(z, xs, mask), strict=True):
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_infer_a_subset_of_outputs_with_defaults_on_the_version_route(client, generator):
    """Asked-for outputs only, in the order asked; a missing modality input is zeros and a missing mask marks
    the modality inputs sent (here: image) as given."""
    z, xs, _ = graph_inputs(generator, 2, seed=5)
    names = [s.name for s in generator.modalities]
    image = np.random.default_rng(0).random((2, xs[names.index("image")].shape[1]), dtype=np.float32)
    features = [image if name == "image" else np.zeros_like(x) for name, x in zip(names, xs, strict=True)]
    mask = np.array([[name == "image" for name in names]] * 2, np.float32)
    expected = dict(zip(generator.output_names, generator.run(z, features, mask), strict=True))
    wanted = [triton.InferRequestedOutput(name, binary_data=False) for name in ("audio_out", "text_out")]
    result = client.infer(MODEL, infer_inputs([("z", z), ("image", image)]), model_version="1", outputs=wanted)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["audio_out", "text_out"]
    assert result.get_output("image_out") is None
    for name in ("audio_out", "text_out"):
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-6, atol=1e-6)


def test_infer_with_the_clients_defaults_binary_in_and_out(client, generator):
    """tritonclient's defaults: every input as binary data after the JSON, every output asked for as binary data
    (request parameter binary_data_output, as no outputs are named)."""
    z, xs, mask = graph_inputs(generator, 3, seed=2, given={"text": CAPTIONS})
    inputs = []
    for name, array in zip(generator.input_names, [z, *xs, mask], strict=True):
        inputs.append(triton.InferInput(name, list(array.shape), "FP32").set_data_from_numpy(array))
    result = client.infer(MODEL, inputs, request_id="bin-1")
    assert result.get_response()["id"] == "bin-1"
    assert_outputs(result, dict(zip(generator.output_names, generator.run(z, xs, mask), strict=True)), binary=True)


def test_binary_inputs_with_json_outputs(client, generator):
    z, xs, mask = graph_inputs(generator, 2, seed=21, given={"text": CAPTIONS[:2]})
    wanted = [triton.InferRequestedOutput(name, binary_data=False) for name in generator.output_names]
    result = client.infer(MODEL, all_inputs(generator, z, xs, mask, binary=True), outputs=wanted)
    assert_outputs(result, dict(zip(generator.output_names, generator.run(z, xs, mask), strict=True)), binary=False)


def test_json_inputs_with_binary_outputs_chosen_per_output(client, generator):
    """Outputs asked for as binary data come back so, the one asked for as JSON as JSON, in the order asked."""
    z, xs, mask = graph_inputs(generator, 2, seed=22)
    expected = dict(zip(generator.output_names, generator.run(z, xs, mask), strict=True))
    wanted = [triton.InferRequestedOutput("text_out"), triton.InferRequestedOutput("image_out", binary_data=False),
              triton.InferRequestedOutput("audio_out")]
    result = client.infer(MODEL, all_inputs(generator, z, xs, mask), outputs=wanted)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["text_out", "image_out", "audio_out"]
    assert_outputs(result, {"text_out": expected["text_out"], "audio_out": expected["audio_out"]}, binary=True)
    assert_outputs(result, {"image_out": expected["image_out"]}, binary=False)


def test_mixed_json_and_binary_inputs(client, generator):
    """Binary and JSON inputs in one request: the binary ones' bytes follow the JSON in input order, whatever
    JSON inputs lie between them."""
    z, xs, mask = graph_inputs(generator, 3, seed=23, given={"text": CAPTIONS})
    modalities = [s.name for s in generator.modalities]
    image = modalities.index("image")
    xs[image] = np.random.default_rng(1).random(xs[image].shape, dtype=np.float32)
    mask[:, image] = 1.0
    names = generator.input_names  # z, image, text, audio, mask
    result = client.infer(MODEL, all_inputs(generator, z, xs, mask, binary={names[0], names[2], names[4]}))
    assert_outputs(result, dict(zip(generator.output_names, generator.run(z, xs, mask), strict=True)), binary=True)


def _binary_body(tensors, outputs=None, parameters=None):
    """A body with binary tensor data, made by hand: ``tensors`` are (name, array, binary); the JSON part, the
    binary inputs' little-endian FP32 bytes in input order, and the length of the JSON part."""
    inputs, raw = [], b""
    for name, array, binary in tensors:
        tensor = {"name": name, "shape": list(array.shape), "datatype": "FP32"}
        if binary:
            data = np.ascontiguousarray(array, dtype="<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw += data
        else:
            tensor["data"] = array.ravel().tolist()
        inputs.append(tensor)
    request = {"inputs": inputs, "outputs": outputs, "parameters": parameters}
    header = json.dumps({key: value for key, value in request.items() if value is not None}).encode()
    return header + raw, len(header)


def test_binary_tensor_data_on_the_wire(server, generator):
    """The wire format by hand, no tritonclient: binary inputs of different sizes around a JSON one; the answer is
    application/octet-stream, its JSON part as long as its header says, then the binary outputs' bytes in output
    order; a per-output binary_data false wins over the request's binary_data_output."""
    z, xs, mask = graph_inputs(generator, 2, seed=24, given={"text": CAPTIONS[1:]})
    expected = dict(zip(generator.output_names, generator.run(z, xs, mask), strict=True))
    arrays = [z, *xs, mask]
    tensors = [(name, a, name != "text") for name, a in zip(generator.input_names, arrays, strict=True)][::-1]
    outputs = [{"name": "audio_out"}, {"name": "text_out", "parameters": {"binary_data": False}}, {"name": "image_out"}]
    body, size = _binary_body(tensors, outputs, {"binary_data_output": True})
    with httpx.Client(base_url=f"http://{server}", timeout=30) as http:
        r = http.post(f"/v2/models/{MODEL}/infer", content=body, headers={"Inference-Header-Content-Length": str(size)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    answer, raw = json.loads(r.content[:length]), r.content[length:]
    assert [o["name"] for o in answer["outputs"]] == ["audio_out", "text_out", "image_out"]
    audio, text, image = answer["outputs"]
    np.testing.assert_allclose(np.reshape(text["data"], text["shape"]), expected["text_out"], rtol=1e-6, atol=1e-6)
    sizes = [4 * expected[name].size for name in ("audio_out", "image_out")]
    assert [audio["parameters"], image["parameters"]] == [{"binary_data_size": n} for n in sizes] and len(raw) == sum(sizes)
    for out, start, stop in ((audio, 0, sizes[0]), (image, sizes[0], len(raw))):
        got = np.frombuffer(raw[start:stop], "<f4").reshape(out["shape"])
        np.testing.assert_allclose(got, expected[out["name"]], rtol=1e-6, atol=1e-6)


def _bad_inputs(generator):
    z, xs, mask = graph_inputs(generator, 2, seed=1)
    width = generator.z_dim
    miscount = infer_inputs([("z", z[:1])])[0].set_shape([2, width])
    nan = z.copy()
    nan[1, 3] = np.nan
    binary_fp64 = triton.InferInput("z", [2, width], "FP64").set_data_from_numpy(z.astype(np.float64))
    binary_miscount = infer_inputs([("z", z)], binary=True)[0].set_shape([1, width])  # 2 rows of bytes for 1 row
    return {
        "wrong shape": (infer_inputs([("z", z[:, :5])]), f"input 'z': shape [2, 5], expected [-1, {width}]"),
        "wrong datatype": ([triton.InferInput("z", [2, width], "FP64").set_data_from_numpy(z.astype(np.float64),
                                                                                           binary_data=False)],
                           "input 'z': datatype 'FP64', expected FP32"),
        "element count": ([miscount], f"input 'z': {width} values for shape [2, {width}] ({2 * width} expected)"),
        "unknown input": (infer_inputs([("z", z), ("noise", z)]), "unknown input 'noise'"),
        "missing z": (infer_inputs([("mask", mask)]), "input 'z' is required"),
        "non-finite": (infer_inputs([("z", nan)]), "values must be finite"),
        "mask not 0/1": (infer_inputs([("z", z), ("mask", mask + 0.5)]), "values must be 0 (not given) or 1"),
        "mask without input": (infer_inputs([("z", z), ("mask", np.ones_like(mask))]),
                               "marks 'image' as given, but no 'image' input was sent"),
        "rows disagree": (infer_inputs([("z", z), ("text", xs[1][:1])]), "the same number of rows"),
        "too many rows": (infer_inputs([("z", np.zeros((MAX_ROWS + 1, width), np.float32))]), f"1 to {MAX_ROWS} rows"),
        "binary wrong shape": (infer_inputs([("z", z[:, :5])], binary=True), f"input 'z': shape [2, 5], expected [-1, {width}]"),
        "binary wrong datatype": ([binary_fp64], "input 'z': datatype 'FP64', expected FP32"),
        "binary size for shape": ([binary_miscount], f"input 'z': binary_data_size {8 * width} for shape [1, {width}] "
                                                     f"({4 * width} expected: 4 bytes per FP32 value)"),
        "binary non-finite": (infer_inputs([("z", nan)], binary=True), "input 'z': values must be finite"),
        "binary mask not 0/1": (infer_inputs([("z", z), ("mask", mask + 0.5)], binary=True), "values must be 0 (not given) or 1"),
    }


BAD = ["wrong shape", "wrong datatype", "element count", "unknown input", "missing z", "non-finite", "mask not 0/1",
       "mask without input", "rows disagree", "too many rows", "binary wrong shape", "binary wrong datatype",
       "binary size for shape", "binary non-finite", "binary mask not 0/1"]


@pytest.mark.parametrize("case", BAD)
def test_invalid_tensors_get_400_with_our_message(client, generator, case):
    inputs, message = _bad_inputs(generator)[case]
    with pytest.raises(InferenceServerException) as error:
        client.infer(MODEL, inputs)
    assert error.value.status() == "400" and message in error.value.message() and "\n" not in error.value.message()
    assert client.is_server_ready()


def _edited(body, size, old, new):
    """``body`` (JSON part ``size`` bytes) with ``old`` in its JSON part replaced by ``new``, and its new JSON size."""
    assert body[:size].count(old) == 1
    return body[:size].replace(old, new) + body[size:], size + len(new) - len(old)


def _malformed_binary_bodies(generator):
    """(body, Inference-Header-Content-Length or None, error) of bodies with binary tensor data gone wrong."""
    z, _, mask = graph_inputs(generator, 2, seed=4)
    width = generator.z_dim
    body, size = _binary_body([("z", z, True), ("mask", mask, True)])
    total = 4 * (z.size + mask.size)
    z_size = b'"binary_data_size": %d}' % (4 * z.size)
    lengths = "binary tensor data: the inputs' binary_data_size add up to {} bytes, but {} bytes follow the JSON part"
    return {
        # z's size declared as one row's for its two rows of bytes (the sizes then fall short of the bytes too)
        "size too small for shape": (*_edited(body, size, z_size, b'"binary_data_size": %d}' % (4 * width)),
                                     f"input 'z': binary_data_size {4 * width} for shape [2, {width}] "
                                     f"({8 * width} expected: 4 bytes per FP32 value)"),
        "bytes missing": (body[:-4], size, lengths.format(total, total - 4)),
        "bytes left over": (body + b"\0" * 8, size, lengths.format(total, total + 8)),
        "header past the body": (body, len(body) + 1, f"Inference-Header-Content-Length {len(body) + 1} is past the end "
                                                      f"of the {len(body)}-byte body"),
        "header not a count": (body, "12a", "Inference-Header-Content-Length '12a' is no byte count"),
        "header too short": (body, size - 1, "malformed JSON: "),
        "no header": (body[:size], None, "input 'z': parameters.binary_data_size without a Inference-Header-Content-Length"),
        "data and binary": (*_edited(body, size, b'"parameters": {"binary_data_size": %d}' % (4 * z.size),
                                     b'"data": [], "parameters": {"binary_data_size": %d}' % (4 * z.size)),
                            'input \'z\': both "data" and parameters.binary_data_size'),
        "size not a count": (*_edited(body, size, z_size, b'"binary_data_size": "%d"}' % (4 * z.size)),
                             f"input 'z': parameters.binary_data_size must be a byte count, got '{4 * z.size}'"),
        "binary_data_output not a flag": (*_binary_body([("z", z, True)], parameters={"binary_data_output": "yes"}),
                                          "parameters.binary_data_output must be true or false, got 'yes'"),
    }


@pytest.mark.parametrize("case", ["size too small for shape", "bytes missing", "bytes left over", "header past the body",
                                  "header not a count", "header too short", "no header", "data and binary",
                                  "size not a count", "binary_data_output not a flag"])
def test_malformed_binary_bodies_get_400_with_our_message(server, generator, case):
    body, length, message = _malformed_binary_bodies(generator)[case]
    headers = {} if length is None else {"Inference-Header-Content-Length": str(length)}
    with httpx.Client(base_url=f"http://{server}", timeout=30) as http:
        r = http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
        assert r.status_code == 400 and list(r.json()) == ["error"]
        assert message in r.json()["error"] and "\n" not in r.json()["error"]
        assert http.get("/v2/health/ready").json() == {"ready": True}


def test_unknown_model_version_or_output_through_the_client(client, generator):
    z, xs, mask = graph_inputs(generator, 1, seed=3)
    inputs = all_inputs(generator, z, xs, mask)
    for kwargs, status, message in [
        ({"model_name": "gen"}, "404", f"unknown model 'gen' (this server serves '{MODEL}')"),
        ({"model_name": MODEL, "model_version": "2"}, "404", "has no version '2'"),
        ({"model_name": MODEL, "outputs": [triton.InferRequestedOutput("image")]}, "400", "unknown output 'image'"),
    ]:
        with pytest.raises(InferenceServerException) as error:
            client.infer(inputs=inputs, **kwargs)
        assert error.value.status() == status and message in error.value.message()
    with pytest.raises(InferenceServerException, match="unknown model 'gen'"):
        client.get_model_metadata("gen")


def test_concurrent_infers_share_the_micro_batcher_with_generate(client, server, generator):
    """Infer requests go through the batching worker /generate uses (its counters count both): a burst of them
    is merged into fewer ONNX Runtime runs, and every request gets its own rows back."""
    http = httpx.Client(base_url=f"http://{server}", timeout=30)
    before = http.get("/health").json()
    jobs = [graph_inputs(generator, 1 + i % 3, seed=100 + i, given={"text": "digit four"} if i % 2 else None)
            for i in range(12)]
    pending = [client.async_infer(MODEL, all_inputs(generator, *job)) for job in jobs]
    generated = [http.post("/generate", json={"n": 2, "seed": 7}) for _ in range(2)]
    results = [p.get_result() for p in pending]
    for (z, xs, mask), result in zip(jobs, results, strict=True):
        for name, expected in zip(generator.output_names, generator.run(z, xs, mask), strict=True):
            np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-6, atol=1e-6)
    assert all(r.status_code == 200 for r in generated)
    after = http.get("/health").json()
    http.close()
    assert after["requests"] - before["requests"] == 14
    assert after["rows"] - before["rows"] == sum(len(job[0]) for job in jobs) + 4
    assert after["runs"] - before["runs"] < 14


def test_a_full_queue_answers_503_in_the_protocols_form(generator):
    """While the worker is busy and the queue is full, an infer request is refused at once with 503."""
    started, gate = threading.Event(), threading.Event()
    limits = ServeLimits(max_n=2, max_batch=2, max_wait_ms=0.0, max_queue=1)
    app = create_app(generator, limits)
    runner = app.state.batcher.runner

    def held(z, xs, mask):
        started.set()
        gate.wait(30)
        return runner(z, xs, mask)

    app.state.batcher.runner = held
    body = {"inputs": [{"name": "z", "shape": [1, generator.z_dim], "datatype": "FP32", "data": [0.0] * generator.z_dim}]}
    with TestClient(app) as http:
        first = threading.Thread(target=lambda: http.post(f"/v2/models/{MODEL}/infer", json=body))
        first.start()
        assert started.wait(10)
        second = threading.Thread(target=lambda: http.post(f"/v2/models/{MODEL}/infer", json=body))
        second.start()
        deadline = time.monotonic() + 30
        while app.state.batcher.stats()["queued"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = http.post(f"/v2/models/{MODEL}/infer", json=body)
        gate.set()
        first.join(30)
        second.join(30)
    assert r.status_code == 503 and r.json() == {"error": "server busy: 1 requests already queued, retry later"}


def test_oversized_compressed_or_malformed_bodies_get_one_line_errors(generator):
    app = create_app(generator, ServeLimits(max_n=2, max_batch=2, max_body_bytes=1024))
    url = f"/v2/models/{MODEL}/infer"
    with TestClient(app) as http:
        big = b'{"inputs": [' + b" " * 2048 + b"]}"
        r = http.post(url, content=big)
        assert r.status_code == 413 and r.json() == {"error": f"request body of {len(big)} bytes exceeds the limit of 1024 bytes"}
        r = http.post(url, content=big, headers={"Inference-Header-Content-Length": "14"})  # binary tensor data too
        assert r.status_code == 413 and r.json() == {"error": f"request body of {len(big)} bytes exceeds the limit of 1024 bytes"}
        for headers in ({"content-encoding": "gzip"}, {"content-encoding": "gzip", "Inference-Header-Content-Length": "3"}):
            r = http.post(url, content=b"\x1f\x8b...", headers=headers)
            assert r.status_code == 400 and r.json() == {"error": "compressed request bodies (gzip) are not supported"}
        r = http.post(url, content=b"{}", headers=[("Inference-Header-Content-Length", "2")] * 2)
        assert r.status_code == 400 and r.json() == {"error": "2 Inference-Header-Content-Length headers: send one"}
        r = http.post(url, content=b'{"inputs": [{"name": "z"')
        assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON: ")
        r = http.post(url, json={"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}], "x": 1})
        assert r.status_code == 400 and r.json() == {"error": "x: Extra inputs are not permitted"}


def test_binary_tensor_data_is_documented(generator):
    """/openapi.json: the infer routes take and answer application/octet-stream too, with the length header."""
    with TestClient(create_app(generator)) as http:
        paths = http.get("/openapi.json").json()["paths"]
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        operation = paths[path]["post"]
        media = {"application/json", "application/octet-stream"}
        assert set(operation["requestBody"]["content"]) == media == set(operation["responses"]["200"]["content"])
        header = [p for p in operation["parameters"] if p["in"] == "header"]
        assert [(p["name"], p["required"], p["schema"]["type"]) for p in header] == [
            ("Inference-Header-Content-Length", False, "integer")]
        assert set(operation["responses"]["200"]["headers"]) == {"Inference-Header-Content-Length"}


def test_nested_and_flat_data_are_the_same_tensor(generator):
    z, xs, mask = graph_inputs(generator, 2, seed=8)
    expected = generator.run(z, xs, mask)
    url = f"/v2/models/{MODEL}/infer"

    def body(layout):
        return {"inputs": [{"name": name, "shape": list(a.shape), "datatype": "FP32", "data": layout(a)}
                           for name, a in zip(generator.input_names, [z, *xs, mask], strict=True)]}

    with TestClient(create_app(generator)) as http:
        for layout in (lambda a: a.tolist(), lambda a: a.ravel().tolist()):
            outputs = http.post(url, json=body(layout)).json()["outputs"]
            for out, want in zip(outputs, expected, strict=True):
                assert out["shape"] == list(want.shape) and len(out["data"]) == want.size
                np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, rtol=1e-6, atol=1e-6)
        ragged = body(lambda a: a.tolist())
        ragged["inputs"][0]["data"][1] = ragged["inputs"][0]["data"][1][:-1]
        r = http.post(url, json=ragged)
        assert r.status_code == 400 and r.json() == {"error": "input 'z': nested data with rows of different lengths"}


def test_ready_only_while_the_batching_worker_runs(generator):
    """Live at once; ready (server and model) only between the worker's start and stop, as OIP says: 4xx = false."""
    app = create_app(generator)
    http = TestClient(app)  # no lifespan yet: the worker has not started
    assert http.get("/v2/health/live").json() == {"live": True}
    r = http.get("/v2/health/ready")
    assert r.status_code == 400 and r.json() == {"ready": False}
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 400
    with http:
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert http.get(f"/v2/models/{MODEL}/versions/1/ready").json() == {"name": MODEL, "ready": True}
    assert http.get("/v2/health/ready").status_code == 400


def test_model_name_flag_and_default(generator, exported, capsys):
    with TestClient(create_app(generator, model_name="mnist-gan.v2")) as http:
        assert http.get("/v2/models/mnist-gan.v2/ready").json() == {"name": "mnist-gan.v2", "ready": True}
        assert http.get(f"/v2/models/{MODEL}").status_code == 404
    assert create_app(OnnxGenerator(exported.path.read_bytes(), device="cpu")).state.model_name == "fastmmgan"
    for bad in ("my model", "-x", "a/b", ""):
        # An impossible port as well: were the name let through, start-up still ends (in the port's error).
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda bad=bad: serve.main([str(exported.path), f"--model-name={bad}", "--port", "70000"]))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and "\n" not in err
        assert err == f"error: model name {bad!r}: use letters, digits, '_', '.' or '-', starting with a letter or digit"


# An RGB image model (tiny_colour_run: photo [4, 6, 3], caption): its image tensors are [-1, 4, 6, 3].


@pytest.fixture(scope="module")
def colour_exported(tiny_colour_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("oip_colour")
    return export_generator(tiny_colour_run, out / "colour.onnx", triton_repo=out / "repo")


@pytest.fixture(scope="module")
def colour_generator(colour_exported):
    return OnnxGenerator(colour_exported.path, device="cpu")


def test_colour_model_metadata_declares_images_like_the_triton_repository(colour_generator, colour_exported):
    with TestClient(create_app(colour_generator)) as http:
        meta = http.get("/v2/models/colour").json()
    declared = {key: [(t["name"], t["datatype"], t["shape"]) for t in meta[key]] for key in ("inputs", "outputs")}
    assert declared == {
        "inputs": [("z", "FP32", [-1, 8]), ("photo", "FP32", [-1, 4, 6, 3]), ("caption", "FP32", [-1, 4]),
                   ("mask", "FP32", [-1, 2])],
        "outputs": [("photo_out", "FP32", [-1, 4, 6, 3]), ("caption_out", "FP32", [-1, 4])],
    }
    inputs_text, outputs_text = (colour_exported.triton_model / "config.pbtxt").read_text().split("output [")
    for key, section in (("inputs", inputs_text), ("outputs", outputs_text)):
        assert declared[key] == [(name, dtype, [-1, *dims]) for name, dtype, dims in _triton_tensors(section)]


def test_colour_infer_takes_and_gives_rgb_images(colour_generator):
    """An RGB image input [rows, 4, 6, 3] (JSON or binary) is the graph's features; photo_out [rows, 4, 6, 3] is
    the image OnnxGenerator.sample decodes for the same noise and conditions."""
    img = np.zeros((4, 6, 3), np.float32)
    img[:, :3, 0] = 1.0
    img[:, 3:, 2] = 1.0
    url = "/v2/models/colour/infer"
    z, xs, mask = graph_inputs(colour_generator, 2, seed=3, given={"photo": np.stack([img, img[:, ::-1]])})
    assert np.array_equal(xs[0].reshape(2, 4, 6, 3)[0], img)
    expected = colour_generator.run(z, xs, mask)
    photos = xs[0].reshape(2, 4, 6, 3)
    with TestClient(create_app(colour_generator)) as http:
        for binary in (False, True):
            body, size = _binary_body([("z", z, False), ("photo", photos, binary), ("mask", mask, False)],
                                      outputs=[{"name": "caption_out"}, {"name": "photo_out"}])
            r = http.post(url, content=body, headers={"Inference-Header-Content-Length": str(size)})
            caption, photo = r.json()["outputs"]
            assert caption["shape"] == [2, 4] and photo["shape"] == [2, 4, 6, 3]
            np.testing.assert_allclose(np.reshape(caption["data"], (2, 4)), expected[1], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.reshape(photo["data"], (2, 72)), expected[0], rtol=1e-6, atol=1e-6)
        nested = {"inputs": [{"name": name, "shape": list(a.shape), "datatype": "FP32", "data": a.tolist()}
                             for name, a in (("z", z), ("photo", photos), ("mask", mask))]}
        caption = http.post(url, json=nested).json()["outputs"][1]
        np.testing.assert_allclose(np.reshape(caption["data"], (2, 4)), expected[1], rtol=1e-6, atol=1e-6)
        z, xs, mask = graph_inputs(colour_generator, 2, seed=4, given={"caption": ["red left", "blue"]})
        body = {"inputs": [{"name": name, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
                           for name, a in (("z", z), ("caption", xs[1]))]}
        photo = http.post(url, json=body).json()["outputs"][0]
        sampled = colour_generator.sample(2, {"caption": ["red left", "blue"]}, seed=4)["photo"]
        np.testing.assert_allclose(np.reshape(photo["data"], photo["shape"]), sampled, rtol=1e-6, atol=1e-6)
        flat = {"inputs": [body["inputs"][0], {"name": "photo", "shape": [2, 72], "datatype": "FP32",
                                               "data": xs[0].ravel().tolist()}]}
        r = http.post(url, json=flat)
        assert r.status_code == 400 and r.json() == {
            "error": "input 'photo': shape [2, 72], expected [-1, 4, 6, 3] (rows, RGB images, channels last)"}
