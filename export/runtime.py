"""Sampling from an exported generator with ONNX Runtime, interchangeable with :func:`fastmmgan.load_generator`.

``OnnxGenerator(path).sample(n, given, seed)`` turns ``given`` and ``seed`` into the graph's inputs with the
same helpers as the PyTorch :class:`fastmmgan.Sampler` (``encode_conditions``, ``draw_noise``,
``decode_outputs``), so both give the same samples for the same seed.

Session settings, on purpose:
- graph optimisation ``ORT_ENABLE_ALL``: Gemm + activation fusions and constant folding of the masks' arithmetic;
- intra-op threads = physical cores (configurable): hyper-threads share the FMA units a GEMM saturates;
- inter-op threads = 1 with sequential execution: the graph is a chain, nothing runs in parallel;
- ``session.intra_op.allow_spinning = 0`` by default: ORT's workers otherwise busy-wait after each run, and in
  a server they share cores with the event loop, request decoding and PyTorch's own pool (oversubscription).
  Pass ``allow_spinning=True`` on a machine dedicated to back-to-back runs, where it trims batch-1 latency.

Execution provider: ``device="auto"`` asks for CUDA only when the CUDA driver reports a GPU (onnxruntime-gpu
lists ``CUDAExecutionProvider`` as available even with no GPU, then logs an error and falls back to CPU).
After the session is built, :attr:`OnnxGenerator.provider` is the provider that actually runs the graph, and it
is logged; asking explicitly for ``cuda`` and getting CPU is an error. On CUDA, runs use IOBinding so
outputs are written into device buffers ORT binds once per run and copied back in one step.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from fastmmgan.errors import FastMMGANError, first_line
from fastmmgan.modalities import ModalitySpec
from fastmmgan.sampler import decode_outputs, encode_conditions, noise_for, wanted_modalities

from .metadata import GeneratorMetadata, io_names
from .specialise import specialise

log = logging.getLogger("fastmmgan.export")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def physical_cores() -> int:
    """Cores this process may run on, counting each physical core once (hyper-threads excluded)."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
    except OSError:
        return max(1, logical)
    per_core = 0
    for part in siblings.split(","):
        lo, _, hi = part.partition("-")
        per_core += int(hi or lo) - int(lo) + 1
    return max(1, logical // max(1, per_core))


def cuda_device_count() -> int:
    """GPUs the CUDA driver reports (0 when there is no driver): decides whether ``auto`` tries CUDA at all."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def session_options(intra_op_threads: int | None = None, allow_spinning: bool = False) -> ort.SessionOptions:
    """The session settings described in the module docstring."""
    threads = physical_cores() if intra_op_threads is None else intra_op_threads
    if threads < 1:
        raise FastMMGANError(f"intra-op threads must be positive, got {threads}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def parse_device(device: str) -> tuple[str, int]:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> (kind, device id)."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise FastMMGANError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)")
    return kind, int(index or 0)


def _providers(kind: str, device_id: int) -> list[Any]:
    wants_cuda = kind == "cuda" or (kind == "auto" and cuda_device_count() > 0)
    if wants_cuda and CUDA_PROVIDER in ort.get_available_providers():
        return [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
    if kind == "cuda":
        raise FastMMGANError(
            f"device 'cuda' requested but this ONNX Runtime has no {CUDA_PROVIDER} (install onnxruntime-gpu)"
        )
    return [CPU_PROVIDER]


def _load_model_source(model: str | Path | bytes) -> tuple[str | bytes, str]:
    if isinstance(model, bytes):
        return model, "the ONNX model"
    path = Path(model)
    if not path.is_file():
        raise FastMMGANError(f"ONNX model not found: {path}" if not path.exists() else f"{path} is not a file")
    return str(path), str(path)


def _create_session(
    source: str | bytes, label: str, options: ort.SessionOptions, providers: list[Any]
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as e:  # onnxruntime's pybind exceptions derive from Exception only
        problem = first_line(e)
        raise FastMMGANError(f"{label} is not a loadable ONNX model (corrupt or truncated?): {problem}") from None


def _metadata_props(session: ort.InferenceSession, label: str) -> dict[str, str]:
    try:
        return dict(session.get_modelmeta().custom_metadata_map)
    except UnicodeDecodeError:  # ONNX Runtime decodes the strings as UTF-8 on the way to Python
        raise FastMMGANError(f"{label}: damaged fastmmgan metadata (not UTF-8 text)") from None


class OnnxGenerator:
    """An exported generator in an ONNX Runtime session: a :class:`~fastmmgan.sampler_protocol.MultimodalSampler`, like
    :class:`fastmmgan.Sampler`.

    ``model``: a ``.onnx`` path (or its bytes). ``device``: ``auto`` (CUDA when a GPU and the CUDA provider are
    there, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. ``use_iobinding``: default on for CUDA, off for CPU.
    """

    def __init__(
        self,
        model: str | Path | bytes,
        device: str = "auto",
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
        use_iobinding: bool | None = None,
    ) -> None:
        source, self.source = _load_model_source(model)
        kind, self.device_id = parse_device(device)
        options = session_options(intra_op_threads, allow_spinning)
        self._model_source, self._options = source, options
        self._model_proto = None  # the parsed graph, loaded when the first specialised session is built
        self.session = _create_session(source, self.source, options, _providers(kind, self.device_id))
        self._specialised: dict[tuple[tuple[str, ...], tuple[str, ...]], ort.InferenceSession | None] = {}
        self.metadata = GeneratorMetadata.from_props(_metadata_props(self.session, self.source), self.source)
        self.input_names, self.output_names = io_names(self.metadata.specs)
        self._widths = [self.z_dim, *(s.dim for s in self.modalities), len(self.modalities)]
        self._check_signature()
        self.providers: list[str] = self.session.get_providers()
        self.provider: str = self.providers[0]
        self._check_provider(kind)
        self.use_iobinding = self.provider == CUDA_PROVIDER if use_iobinding is None else use_iobinding
        self.intra_op_threads = options.intra_op_num_threads
        log.info("ONNX Runtime runs %s on %s (%d intra-op threads)", self.source, self.provider, self.intra_op_threads)

    @property
    def modalities(self) -> tuple[ModalitySpec, ...]:
        return self.metadata.specs

    @property
    def z_dim(self) -> int:
        return self.metadata.z_dim

    def _check_signature(self) -> None:
        out_widths = [s.dim for s in self.modalities]
        expected_in = {name: ("tensor(float)", w) for name, w in zip(self.input_names, self._widths, strict=True)}
        expected_out = {name: ("tensor(float)", w) for name, w in zip(self.output_names, out_widths, strict=True)}
        for args, expected in ((self.session.get_inputs(), expected_in), (self.session.get_outputs(), expected_out)):
            found = {a.name: (a.type, a.shape[1] if len(a.shape) == 2 else None) for a in args}
            if found != expected:
                raise FastMMGANError(f"{self.source}: graph inputs/outputs {found} differ from its metadata {expected}")

    def _check_provider(self, kind: str) -> None:
        if self.provider == CUDA_PROVIDER or kind == "cpu":
            return
        if kind == "cuda":
            raise FastMMGANError(
                f"device 'cuda' requested but ONNX Runtime fell back to {self.provider} "
                "(see its log above: CUDA or cuDNN libraries missing?)"
            )
        if cuda_device_count() > 0:
            log.warning("a GPU is present but ONNX Runtime runs on %s (CUDA provider failed; see its log)",
                        self.provider)

    def run(self, z: np.ndarray, xs: Sequence[np.ndarray], mask: np.ndarray) -> list[np.ndarray]:
        """One ORT run: z [B, z_dim], xs M arrays [B, dim_m], mask [B, M] (1 = given) -> M float32 arrays [B, dim_m]."""
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (z, *xs, mask)]
        if len(arrays) != len(self._widths):
            raise FastMMGANError(f"expected {len(self.modalities)} feature arrays, got {len(xs)}")
        batch = len(arrays[0])
        for name, a, width in zip(self.input_names, arrays, self._widths, strict=True):
            if a.shape != (batch, width):
                raise FastMMGANError(f"input {name!r}: expected shape [{batch}, {width}], got {list(a.shape)}")
        feed = dict(zip(self.input_names, arrays, strict=True))
        if self.use_iobinding:
            return self._run_bound(feed)
        return self.session.run(self.output_names, feed)

    def _run_bound(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        device = "cuda" if self.provider == CUDA_PROVIDER else "cpu"
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        for name in self.output_names:
            binding.bind_output(name, device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def generate(self, z: torch.Tensor, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`run` on tensors: noise z [n, z_dim], condition features xs [n, dim_m] (zeros where not
        given), mask [n, M] (bool) -> features per modality (CPU float32 [n, dim_m])."""
        arrays = [t.detach().cpu().float().numpy() for t in (z, *xs, mask)]
        return [torch.from_numpy(o) for o in self.run(arrays[0], arrays[1:-1], arrays[-1])]

    def sample_features(
        self, n: int, given: Mapping[str, Any] | None = None, seed: int | None = None, z: Any = None,
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Generated features [n, dim_m] per modality (CPU float32 tensors) and the normalised conditions."""
        xs, mask, raw = encode_conditions(self.modalities, n, given)
        return self.generate(noise_for(n, self.z_dim, seed, z), xs, mask), raw

    def sample(
        self,
        n: int,
        given: Mapping[str, Any] | None = None,
        seed: int | None = None,
        modalities: str | Sequence[str] | None = None,
        z: Any = None,
    ) -> dict[str, Any]:
        """n samples of every modality (or of those named in ``modalities``), exactly as
        :meth:`fastmmgan.Sampler.sample` returns them (``z`` replaces the seeded noise there too). Runs a session
        specialised to this call's given and wanted modalities (see :mod:`fastmmgan.export.specialise`; built
        on first use of each pattern)."""
        wanted = wanted_modalities(self.modalities, modalities)
        xs, mask, raw = encode_conditions(self.modalities, n, given)
        z = noise_for(n, self.z_dim, seed, z).numpy()
        needed = [s.name for s in wanted if s.name not in raw]
        features: list[torch.Tensor | None] = [None] * len(self.modalities)
        if needed:
            names = [s.name for s in self.modalities]
            for name, out in zip(needed, self._run_pattern(z, xs, tuple(raw), tuple(needed)), strict=True):
                features[names.index(name)] = torch.from_numpy(out)
        return decode_outputs(self.modalities, features, raw, modalities)

    def _run_pattern(
        self, z: np.ndarray, xs: Sequence[torch.Tensor], given: tuple[str, ...], needed: tuple[str, ...]
    ) -> list[np.ndarray]:
        """The ``needed`` outputs for rows that all give the modalities in ``given`` (others' features are zeros)."""
        session = self._session_for(given, needed)
        specs = self.modalities
        if session is None:
            mask = np.tile(np.array([[s.name in given for s in specs]], dtype=np.float32), (len(z), 1))
            out = self.run(z, [x.numpy() for x in xs], mask)
            return [out[[s.name for s in specs].index(name)] for name in needed]
        z_name, *x_names, _ = self.input_names
        feed = {z_name: z, **{x_names[m]: xs[m].numpy() for m, s in enumerate(specs) if s.name in given}}
        by_modality = dict(zip((s.name for s in specs), self.output_names, strict=True))
        return session.run([by_modality[name] for name in needed], feed)

    def _session_for(self, given: tuple[str, ...], needed: tuple[str, ...]) -> ort.InferenceSession | None:
        """The specialised session for this pattern, checked once against the full graph (None: use the full one)."""
        key = (given, needed)
        if key not in self._specialised:
            self._specialised[key] = self._build_specialised(given, needed)
        return self._specialised[key]

    def _build_specialised(self, given: tuple[str, ...], needed: tuple[str, ...]) -> ort.InferenceSession | None:
        import onnx

        specs = self.modalities
        by_modality = dict(zip((s.name for s in specs), self.output_names, strict=True))
        z_name, *x_names, mask_name = self.input_names
        constants = {x_names[m]: np.zeros((1, s.dim), np.float32) for m, s in enumerate(specs) if s.name not in given}
        constants[mask_name] = np.array([[s.name in given for s in specs]], dtype=np.float32)
        try:
            if self._model_proto is None:  # parsed once; specialise() works on a copy of it
                self._model_proto = onnx.load_from_string(self._model_source) if isinstance(self._model_source, bytes) \
                    else onnx.load(self._model_source)
            small = specialise(self._model_proto, constants, [by_modality[name] for name in needed])
            session = ort.InferenceSession(small.SerializeToString(), self._options, providers=self.session.get_providers())
        except Exception as e:  # noqa: BLE001 - any failure leaves the full graph in charge, which is always right
            log.debug("no specialised session for given=%s wanted=%s: %s", given, needed, first_line(e))
            return None
        # One check against the full graph before the session is trusted.
        rng = np.random.default_rng(0)
        z = rng.standard_normal((2, self.z_dim), dtype=np.float32)
        xs = [rng.random((2, s.dim), dtype=np.float32) if s.name in given else np.zeros((2, s.dim), np.float32) for s in specs]
        full = dict(zip((s.name for s in specs), self.run(z, xs, np.repeat(constants[mask_name], 2, axis=0)), strict=True))
        feed = {z_name: z, **{x_names[m]: x for m, (s, x) in enumerate(zip(specs, xs, strict=True)) if s.name in given}}
        try:
            got = session.run([by_modality[name] for name in needed], feed)
        except Exception as e:  # noqa: BLE001 - e.g. a folded batch-1 constant meeting batch-n rows in a Concat
            log.debug("specialised session for given=%s wanted=%s failed its check: %s", given, needed, first_line(e))
            return None
        if not all(np.allclose(g, full[name], atol=1e-5, rtol=1e-4) for g, name in zip(got, needed, strict=True)):
            log.warning("a specialised session disagreed with the full graph; sampling uses the full graph")
            return None
        return session

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.modalities)
        return f"OnnxGenerator({self.source!r}, modalities=[{names}], provider={self.provider})"
