"""Property tests: random malformed inputs to the data loader, the `given` parsers and the server's request
parser end in a result or one clear error, never a crash or a hang."""

import json

import numpy as np
import pytest
from fastapi import HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmmgan.data import digits_specs, load_npz_dataset
from fastmmgan.errors import FastMMGANError
from fastmmgan.export.server import _prepare, parse_request
from fastmmgan.generate import parse_given
from fastmmgan.sampler import encode_conditions

SPECS = digits_specs()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.sampled_from(["image", "text", "audio", "kinds", "labels", "mask", "sample_rate", "x", ""])
kind_entries = st.lists(st.sampled_from(["image=image", "text=text", "audio=audio", "x=video", "image", "=text",
                                         "text=text"]), max_size=4)
small_arrays = st.one_of(
    st.builds(lambda shape, fill: np.full(shape, fill, dtype=np.float32),
              st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
              st.sampled_from([0.0, 0.5, 1.0, -3.0, np.nan, np.inf])),
    st.lists(st.text(max_size=12), max_size=5).map(lambda xs: np.array(xs, dtype=str)),
    st.integers(-5, 5).map(np.array),
)


@FUZZ
@given(kinds=kind_entries, arrays=st.dictionaries(names, small_arrays, max_size=5))
def test_data_loader_accepts_or_names_the_problem(tmp_path, kinds, arrays):
    arrays = dict(arrays)
    if kinds:
        arrays["kinds"] = np.array(kinds, dtype=str)
    path = tmp_path / "fuzz.npz"
    np.savez(path, **arrays)
    try:
        ds = load_npz_dataset(path)
    except FastMMGANError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert len(ds) > 0 and all(np.isfinite(x.numpy()).all() for x in ds.features)


@FUZZ
@given(data=st.binary(max_size=64))
def test_data_loader_survives_random_bytes(tmp_path, data):
    path = tmp_path / "random.npz"
    path.write_bytes(data)
    with pytest.raises(FastMMGANError):
        load_npz_dataset(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@FUZZ
@given(n=st.one_of(st.integers(-2, 4), st.floats(allow_nan=True), st.text(max_size=3)),
       conditions=st.dictionaries(st.sampled_from(["image", "text", "audio", "smell"]), json_values, max_size=3))
def test_given_conditions_accept_or_name_the_problem(n, conditions):
    try:
        xs, mask, raw = encode_conditions(SPECS, n, conditions)
    except FastMMGANError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert [x.shape for x in xs] == [(n, s.dim) for s in SPECS] and mask.shape == (n, len(SPECS))


@FUZZ
@given(items=st.lists(st.text(max_size=20), max_size=3))
def test_given_flags_accept_or_name_the_problem(items):
    try:
        parsed = parse_given(items, SPECS)
    except FastMMGANError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert set(parsed) <= {"image", "text", "audio"}


@FUZZ
@given(body=st.one_of(st.binary(max_size=80), json_values.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"n": json_values, "given": json_values, "seed": json_values})
                      .map(lambda v: json.dumps(v).encode())))
def test_server_request_parser_answers_4xx_or_a_request(body):
    try:
        request = parse_request(body)
        _prepare(SPECS, 8, request, seed=0)
    except HTTPException as e:
        assert 400 <= e.status_code < 500 and e.detail
