"""Export a trained generator (the EMA copy) to one self-contained ONNX file, checked before it is written.

The graph: inputs ``z [batch, z_dim]``, one float feature input per modality ``<name> [batch, dim]`` and a
float ``mask [batch, M]`` (1 = given); outputs ``<name>_out [batch, dim]`` in [0, 1]. One symbolic ``batch``
axis is shared by all of them, and there are no random ops: noise is an input, so the caller owns the seed.
Inputs and outputs stay float32 in an ``--fp16`` file too (casts at the edges), so callers never change.

Exporter: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``) by default. Measured here with
torch 2.13 on this generator, both exporters give the same parity (max error ~1e-6 vs PyTorch) and the same ORT
speed once ORT fuses the graph, but the TorchScript exporter takes ~0.3 s where the dynamo exporter takes
6-16 s on a 2-core CPU (torch.export tracing, decompositions, onnxscript optimisation); it also
needs no onnxscript and prints nothing. It is deprecated since torch 2.9, so ``exporter="dynamo"``
(``--exporter dynamo``) is kept working and tested as the way forward once it is removed. Only standard
``ai.onnx`` ops come out either way.

Checks, all before anything is written: ``onnx.checker`` (full check, with shape inference), no custom domain
and no random op, then parity against the PyTorch generator at batch 1 and at an odd batch that holds every
mask pattern. Tolerance ``|onnx - torch| <= atol + rtol * |torch|``: fp32 atol 1e-5, rtol 1e-3; fp16 atol and
rtol 2e-2 (the project's numerics policy for half precision: fp16 keeps 11 significant bits, so rounding the
weights and the GEMM inputs alone moves the outputs by ~1e-3). The file is then written atomically; a failed
check leaves an existing file untouched.

fp16 files are for the CUDA execution provider (half the weight bytes, tensor-core GEMMs). Where there is no GPU
the parity check runs on the CPU provider, which upcasts the fp16 ops it has no kernels for: it still checks the
rounded weights, but not CUDA's arithmetic, and such a file runs slower than fp32 on CPU.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import fastmmgan
from fastmmgan.checkpoint import atomic_write_bytes, load_checkpoint
from fastmmgan.config import TrainConfig
from fastmmgan.errors import FastMMGANError, first_line
from fastmmgan.models import Generator
from fastmmgan.ops import kernels_mode
from fastmmgan.sampler import generator_from_state

from .metadata import GeneratorMetadata, io_names
from .runtime import CUDA_PROVIDER, OnnxGenerator
from .triton_repo import check_triton_args, write_triton_repo

EXPORTERS = ("torchscript", "dynamo")
OPSETS = {"torchscript": (9, 20), "dynamo": (18, 23)}
DEFAULT_OPSET = 18
BATCH_AXIS = "batch"
TOLERANCES = {"fp32": (1e-5, 1e-3), "fp16": (2e-2, 2e-2)}
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
_TRACE_BATCH = 3


class ExportGraph(nn.Module):
    """The generator in the ONNX calling convention: ``(z, x_1..x_M, mask)`` -> ``(y_1..y_M)``, all float32.

    The float mask feeds the generator's ``given`` directly: the fusion's presence weights are
    ``mask / max(1, sum(mask))`` either way, so 0/1 floats give exactly the bool path's numbers.
    """

    def __init__(self, generator: Generator, fp16: bool = False) -> None:
        super().__init__()
        self.dtype = torch.float16 if fp16 else torch.float32
        self.generator = copy.deepcopy(generator).to(device="cpu", dtype=self.dtype)
        self.eval()

    def forward(self, z: torch.Tensor, *features_and_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *xs, mask = (self._cast(t) for t in features_and_mask)
        out = self.generator(self._cast(z), xs, mask)
        return tuple(o.float() if self.dtype != torch.float32 else o for o in out)

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        """To the weights' dtype; fp32 skips it, since the tracer would record a no-op Cast."""
        return t.to(self.dtype) if self.dtype != torch.float32 else t


def mask_patterns(batch: int, modalities: int) -> torch.Tensor:
    """A float mask [batch, M] cycling through every given/not-given pattern, starting with all given."""
    full = 2**modalities - 1
    codes = (full - torch.arange(batch)) % (full + 1)
    return ((codes[:, None] >> torch.arange(modalities)) & 1).float()


def example_inputs(generator: Generator, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random graph inputs: z ~ N(0, 1), features ~ U[0, 1), masks from :func:`mask_patterns`."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, generator.z_dim, generator=rng)
    xs = [torch.rand(batch, s.dim, generator=rng) for s in generator.specs]
    return (z, *xs, mask_patterns(batch, len(generator.specs)))


def parity_batches(modalities: int) -> tuple[int, int]:
    """Batch 1 and an odd batch holding every mask pattern (capped at 1025 rows)."""
    return 1, min(2**modalities, 1024) + 1


def _trace_torchscript(
    graph: ExportGraph, args: tuple, inputs: list[str], outputs: list[str], opset: int
) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            graph, args, buf, dynamo=False, input_names=inputs, output_names=outputs, opset_version=opset,
            dynamic_axes={name: {0: BATCH_AXIS} for name in inputs + outputs}, do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def _trace_dynamo(
    graph: ExportGraph, args: tuple, inputs: list[str], outputs: list[str], opset: int
) -> onnx.ModelProto:
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used", category=UserWarning)
            program = torch.onnx.export(
                graph, args, dynamo=True, input_names=inputs, output_names=outputs, opset_version=opset,
                dynamic_shapes=({0: batch}, tuple({0: batch} for _ in inputs[1:])), optimize=True, verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    return program.model_proto


def trace_to_onnx(
    generator: Generator, opset: int = DEFAULT_OPSET, fp16: bool = False, exporter: str = "torchscript"
) -> onnx.ModelProto:
    """The generator as an ONNX graph (see the module docstring for its inputs, outputs and exporter)."""
    if exporter not in EXPORTERS:
        raise FastMMGANError(f"unknown exporter {exporter!r} (expected one of {', '.join(EXPORTERS)})")
    lo, hi = OPSETS[exporter]
    if not lo <= opset <= hi:
        raise FastMMGANError(f"opset {opset} is outside what the {exporter} exporter supports ({lo}-{hi})")
    inputs, outputs = io_names(generator.specs)
    graph = ExportGraph(generator, fp16)
    args = example_inputs(generator, _TRACE_BATCH)
    trace = _trace_torchscript if exporter == "torchscript" else _trace_dynamo
    try:
        with kernels_mode("reference"), torch.no_grad():
            return trace(graph, args, inputs, outputs, opset)
    except FastMMGANError:
        raise
    except Exception as e:  # the exporters raise many types (ValueError, RuntimeError, torch.onnx errors)
        raise FastMMGANError(f"ONNX export failed (exporter {exporter}, opset {opset}): {first_line(e)}") from None


def attach_metadata(model: onnx.ModelProto, meta: GeneratorMetadata) -> None:
    """Store the generator's metadata in ``metadata_props`` (other entries are kept) and name the producer."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta.to_props())
    onnx.helper.set_model_props(model, props)
    model.producer_name = "fastmmgan"
    model.producer_version = fastmmgan.__version__
    model.doc_string = "fastmmgan generator: z, one feature input per modality and a mask -> every modality's features"


def nonstandard_ops(model: onnx.ModelProto) -> list[str]:
    """Ops outside the standard ONNX domain, local functions, and random ops: what an export must not contain."""
    bad = {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS}
    bad |= {f"random op {n.op_type}" for n in model.graph.node if n.op_type in RANDOM_OPS}
    bad |= {f"function {f.domain}::{f.name}" for f in model.functions}
    return sorted(bad)


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` with ``full_check`` (strict shape inference) plus :func:`nonstandard_ops`."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise FastMMGANError(f"the exported model fails onnx.checker: {str(e).strip().splitlines()[0]}") from None
    bad = nonstandard_ops(model)
    if bad:
        raise FastMMGANError(f"the exported model contains non-standard ops: {', '.join(bad)}")


@dataclass(frozen=True)
class ParityResult:
    """One batch of the parity check: the largest |onnx - torch| and whether every element is within tolerance."""

    batch: int
    max_abs_error: float
    ok: bool


def check_parity(
    runner: OnnxGenerator, generator: Generator, precision: str, batches: Sequence[int], seed: int = 0
) -> list[ParityResult]:
    """Run both on the same random inputs at each batch size; compare with :data:`TOLERANCES`."""
    atol, rtol = TOLERANCES[precision]
    reference = generator.to("cpu").eval()
    results = []
    for i, batch in enumerate(batches):
        z, *xs, mask = example_inputs(reference, batch, seed + i)
        with kernels_mode("reference"), torch.no_grad():
            expected = [t.numpy() for t in reference(z, xs, mask.bool())]
        got = runner.run(z.numpy(), [x.numpy() for x in xs], mask.numpy())
        err = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
        ok = all(bool(np.all(np.abs(g - e) <= atol + rtol * np.abs(e))) for g, e in zip(got, expected, strict=True))
        results.append(ParityResult(batch, err, ok))
    return results


@dataclass
class ExportReport:
    """What :func:`export_generator` wrote and measured."""

    path: Path
    size_bytes: int
    opset: int
    precision: str
    exporter: str
    provider: str
    parity: list[ParityResult]
    metadata: GeneratorMetadata
    triton_model: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact a line (the CLI prints these)."""
        atol, rtol = TOLERANCES[self.precision]
        tol = f"atol {atol:g}, rtol {rtol:g}"
        out = [f"parity batch {r.batch}: max abs error {r.max_abs_error:.3g} ({tol}) on {self.provider}"
               for r in self.parity]
        out += self.notes
        size = f"{self.size_bytes / 1e6:.2f} MB"
        out.append(f"wrote {self.path} ({size}, opset {self.opset}, {self.precision}, exporter {self.exporter})")
        if self.triton_model is not None:
            out.append(f"wrote Triton model {self.triton_model}")
        return out


def _load(source: str | Path, precision: str) -> tuple[Generator, GeneratorMetadata]:
    state = load_checkpoint(source)
    try:
        generator = generator_from_state(state)
        cfg = TrainConfig.from_dict(state["config"])
    except FastMMGANError as e:  # generator_from_state names the problem; the path is added here
        raise FastMMGANError(f"{source}: {e}") from None
    step = int(state.get("step", 0))
    meta = GeneratorMetadata(generator.specs, generator.z_dim, fastmmgan.__version__, cfg.model_hash(), precision, step)
    return generator, meta


def _verify(data: bytes, generator: Generator, precision: str, out: Path) -> tuple[OnnxGenerator, list[ParityResult]]:
    """Parity of the serialized model against PyTorch; raises (naming ``out`` as not written) above tolerance.

    fp32 runs on the CPU provider, the reference platform; fp16 on CUDA where there is a GPU.
    """
    runner = OnnxGenerator(data, device="auto" if precision == "fp16" else "cpu")
    parity = check_parity(runner, generator, precision, parity_batches(len(generator.specs)))
    if not all(r.ok for r in parity):
        atol, rtol = TOLERANCES[precision]
        errors = ", ".join(f"batch {r.batch}: {r.max_abs_error:.3g}" for r in parity)
        raise FastMMGANError(
            f"ONNX output differs from PyTorch beyond atol {atol:g}, rtol {rtol:g} ({errors}); {out} not written"
        )
    return runner, parity


def export_generator(
    source: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    exporter: str = "torchscript",
    triton_repo: str | Path | None = None,
    triton_name: str | None = None,
    triton_max_batch: int = 1024,
) -> ExportReport:
    """Export the EMA generator of a run directory or checkpoint to ``out`` (one ``.onnx`` file), after checks.

    Raises :class:`FastMMGANError` (nothing written) when the export, ``onnx.checker`` or parity fails.
    """
    out = Path(out)
    if out.is_dir():
        raise FastMMGANError(f"--out {out} is a directory; give a file name such as {out / 'gen.onnx'}")
    triton_name = triton_name or out.stem
    if triton_repo is not None:
        check_triton_args(triton_name, triton_max_batch)
    precision = "fp16" if fp16 else "fp32"
    generator, meta = _load(source, precision)
    model = trace_to_onnx(generator, opset, fp16, exporter)
    attach_metadata(model, meta)
    check_model(model)
    data = model.SerializeToString()
    runner, parity = _verify(data, generator, precision, out)
    atomic_write_bytes(out, data)
    report = ExportReport(out, len(data), opset, precision, exporter, runner.provider, parity, meta)
    if fp16 and runner.provider != CUDA_PROVIDER:
        report.notes.append("note: the fp16 parity check ran on the CPU provider (no usable GPU); fp16 files are for CUDA")
    if triton_repo is not None:
        report.triton_model = write_triton_repo(triton_repo, data, meta, triton_name, triton_max_batch)
    return report
