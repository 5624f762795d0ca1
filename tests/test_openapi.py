"""The server's OpenAPI document: it describes every route's body, parameters and answers, and the server keeps
to it (schemathesis drives every operation with generated valid and invalid requests)."""

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, configuration, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fastmmgan.export import OnnxGenerator, export_generator
from fastmmgan.export.server import ServeLimits, create_app

# Small limits: generated requests stay cheap (at most 4 rows, small bodies) and the 413 and n-limit answers occur.
LIMITS = ServeLimits(max_n=4, max_batch=16, max_wait_ms=0.0, max_queue=16, max_body_bytes=16 << 10)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory):
    """Hypothesis's caches go to a temporary directory, not the checkout (its example database is off here)."""
    home = configuration.storage_directory(intent_to_write=False).home_directory
    configuration.set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    configuration.set_hypothesis_home_dir(home)


@pytest.fixture(scope="module")
def generator(tiny_run, tmp_path_factory):
    return OnnxGenerator(export_generator(tiny_run, tmp_path_factory.mktemp("openapi") / "gen.onnx").path, device="cpu")


@pytest.fixture(scope="module")
def app(generator):
    return create_app(generator, LIMITS)


@pytest.fixture(scope="module")
def openapi(app):
    with TestClient(app) as client:
        return client.get("/openapi.json").json()


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_answer_is_documented_and_no_request_breaks_the_server(api_schema):
    """Generated requests, valid and invalid, to every operation: never a 5xx, and each answer's status, media
    type and body are the ones the document declares. (Hypothesis strategies per operation, not schemathesis's
    pytest plugin, which does not run under pytest 9.2.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=8, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()


def _body_schema(openapi, path):
    content = openapi["paths"][path]["post"]["requestBody"]["content"]
    ref = content["application/json"]["schema"]["$ref"]
    return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _error_schema(openapi, path, method, status):
    ref = openapi["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
    return openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_request_bodies_are_documented(openapi):
    generate = _body_schema(openapi, "/generate")
    assert generate["required"] == ["n"] and set(generate["properties"]) == {"n", "given", "seed"}
    assert generate["additionalProperties"] is False and generate["properties"]["n"]["minimum"] == 1
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        infer = _body_schema(openapi, path)
        assert infer["required"] == ["inputs"] and set(infer["properties"]) == {"id", "parameters", "inputs", "outputs"}
        tensor = openapi["components"]["schemas"][infer["properties"]["inputs"]["items"]["$ref"].rsplit("/", 1)[1]]
        assert set(tensor["required"]) == {"name", "shape", "datatype", "data"}
    path_params = {p["name"]: p for p in openapi["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]}
    assert path_params["name"]["schema"]["enum"] == ["gen"] and path_params["version"]["schema"]["enum"] == ["1"]
    params = {p["name"]: p for p in openapi["paths"]["/generate"]["post"]["parameters"]}
    assert params["format"]["in"] == "query" and params["format"]["schema"]["enum"] == ["json", "png", "wav"]
    assert params["modality"]["schema"]["enum"] == ["image", "text", "audio"]


def test_error_answers_are_documented_as_one_line(openapi):
    generate = openapi["paths"]["/generate"]["post"]["responses"]
    assert set(generate) == {"200", "400", "413", "422", "503"}
    assert set(generate["200"]["content"]) == {"application/json", "image/png", "audio/wav"}
    for status in ("400", "413", "422", "503"):
        error = _error_schema(openapi, "/generate", "post", status)
        assert error["properties"] == {"detail": {"type": "string", "title": "Detail"}}
    infer = openapi["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert set(infer) == {"200", "400", "404", "413", "503"}
    for status in ("400", "404", "413", "503"):
        assert set(_error_schema(openapi, "/v2/models/{name}/infer", "post", status)["properties"]) == {"error"}
    assert set(openapi["paths"]["/v2/models/{name}"]["get"]["responses"]) == {"200", "404"}
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_fastapi_validation_errors_keep_the_one_line_form(generator):
    """Parameters FastAPI validates itself answer in the server's one-line forms too: 422 ``detail`` on the
    fastmmgan routes, 400 ``error`` on the /v2 routes."""
    app = create_app(generator, LIMITS)

    @app.get("/probe")
    @app.get("/v2/probe")
    async def probe(count: int) -> dict[str, int]:
        return {"count": count}

    with TestClient(app) as client:
        r = client.get("/probe", params={"count": "many"})
        assert r.status_code == 422 and r.json() == {"detail": "query.count: Input should be a valid integer, unable to "
                                                               "parse string as an integer"}
        r = client.get("/v2/probe")
        assert r.status_code == 400 and r.json() == {"error": "query.count: Field required"}
        assert client.get("/v2/probe", params={"count": 3}).json() == {"count": 3}
