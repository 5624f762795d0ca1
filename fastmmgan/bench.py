"""``python -m fastmmgan.bench``: the training step, compiled vs the eager reference, as a table.

For each config: ms per step of every implementation, the compiled step's speed-up over each (median of
per-round ratios, all interleaved round by round on the same inputs, so a busy machine slows all alike), samples/s, useful
GFLOP/s and its share of this machine's GEMM peak in the step's compute dtype (fp32 on CPU, bf16 under
the CUDA step's autocast), measured in the same run with a square matmul.
Before timing, the compiled step is checked against the reference for a few steps from the same init,
both under the same autocast and dispatch, at that dtype's tolerance of the numerics policy.

Configs (see :data:`CONFIGS`):

- ``seed-mnist``: the seeds' classic MLP GAN exactly (G 100-128-256-784 sigmoid, D 784-256-128-1,
  leaky-ReLU 0.2, non-saturating loss; ``--g-widths 128,256 --d-widths 256,128 --mbstd-group 0``) on one
  28x28 image modality of uniform random data. Here the hand-written loop a user writes from the seeds
  (:class:`HandwrittenGAN`: ``nn.Sequential`` models, ``torch.optim.Adam``, two D passes), eager and with
  ``torch.compile`` on G and D, is timed beside both steps from the same initial weights, and the table
  leads with the compiled step's speed-up over it.
- ``digits``: :class:`~fastmmgan.config.TrainConfig` defaults on the built-in digits data.
- ``wide``: width 1024 on the digits modalities with random data; batch 4096 on a GPU, 1024 on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .config import TrainConfig
from .data import MultimodalDataset, digits_specs, load_dataset
from .modalities import ModalitySpec
from .models import Discriminator, Generator, calibrate_fusions_
from .step import CompiledStep, Recipe, ReferenceStep, StepInputs, autocast_dtype
from .trainer import draw_step_inputs

Step = Callable[[StepInputs], dict[str, torch.Tensor]]


@dataclass
class Models:
    """A run's trainable state, built as the trainer builds it."""

    G: Generator
    D: Discriminator
    ema: Generator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam

    def copy(self, cfg: TrainConfig) -> Models:
        """Deep copies of the networks with fresh optimizers (call before the first step)."""
        G, D, ema = copy.deepcopy(self.G), copy.deepcopy(self.D), copy.deepcopy(self.ema)
        return Models(G, D, ema, adam(G, cfg.lr, cfg), adam(D, cfg.d_lr or cfg.lr, cfg))


def make_steps(ref: Models, fast: Models, cfg: TrainConfig, **options) -> tuple[ReferenceStep, CompiledStep]:
    """The reference step on ``ref``'s models and the compiled step (``options`` for
    :class:`~fastmmgan.step.CompiledStep`, e.g. backend) on ``fast``'s, both with ``cfg``'s objectives
    and both under the autocast of ``cfg.precision`` on the models' device."""
    recipe = Recipe.from_config(cfg)
    amp_dtype = autocast_dtype(cfg.precision, next(fast.G.parameters()).device)
    return (
        ReferenceStep(ref.G, ref.D, ref.ema, ref.opt_g, ref.opt_d, recipe, amp_dtype=amp_dtype),
        CompiledStep(fast.G, fast.D, fast.ema, fast.opt_g, fast.opt_d, recipe, amp_dtype=amp_dtype, **options),
    )


def adam(model: torch.nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.betas, fused=True)


def build_models(ds: MultimodalDataset, cfg: TrainConfig, device: torch.device | str = "cpu") -> Models:
    """G, D, EMA and fused Adams from ``cfg.seed``, with the fusions calibrated on up to 512 samples
    (as :class:`~fastmmgan.trainer.Trainer` does)."""
    torch.manual_seed(cfg.seed)
    G = Generator.from_config(ds.specs, cfg).to(device)
    D = Discriminator.from_config(ds.specs, cfg).to(device)
    calibrate_fusions_(G, D, ds.features, cfg.seed)
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    return Models(G, D, ema, adam(G, cfg.lr, cfg), adam(D, cfg.d_lr or cfg.lr, cfg))


def random_dataset(specs: Sequence[ModalitySpec], n: int, seed: int = 0, present: float = 1.0) -> MultimodalDataset:
    """n samples of uniform random features; each modality present with probability ``present``
    (at least one per sample)."""
    gen = torch.Generator().manual_seed(seed)
    features = tuple(torch.rand(n, s.dim, generator=gen) for s in specs)
    mask = torch.rand(n, len(specs), generator=gen) < present
    mask[torch.arange(n), torch.randint(0, len(specs), (n,), generator=gen)] = True
    return MultimodalDataset(tuple(specs), features, mask)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark row: a name, the training config and how to get its data for a batch size."""

    name: str
    cfg: TrainConfig
    data: Callable[[int], MultimodalDataset]


def _seed_mnist_data(batch: int) -> MultimodalDataset:
    return random_dataset((ModalitySpec("image", "image", image_shape=(28, 28)),), max(2048, 2 * batch))


def _digits_data(batch: int) -> MultimodalDataset:
    return load_dataset("digits", seed=0)


def _wide_data(batch: int) -> MultimodalDataset:
    return random_dataset(digits_specs(), 2 * batch)


SEED_MNIST = TrainConfig(
    z_dim=100, z_components=0, g_widths=(128, 256), d_widths=(256, 128), mbstd_group=0, mmd_weight=0.0,
    diversity_weight=0.0,
)
"""The seeds' MNIST GAN exactly: G 100-128-256-784 sigmoid, D 784-256-128-1, leaky-ReLU 0.2, non-saturating
loss, Adam(2e-4 / 1e-4, betas 0.5, 0.999); no recipe extras (stddev feature, MMD, mode seeking)."""

CONFIGS: dict[str, BenchConfig] = {
    "seed-mnist": BenchConfig("seed-mnist", SEED_MNIST, _seed_mnist_data),
    "digits": BenchConfig("digits", TrainConfig(), _digits_data),
    "wide": BenchConfig("wide", TrainConfig(g_width=1024, d_width=1024), _wide_data),
}


def default_batches(name: str, cuda: bool) -> list[int]:
    """Batch sizes a config is timed at: the targets' 64 and 1024; ``wide`` at 4096 on a GPU, 1024 on a CPU."""
    if name == "wide":
        return [4096 if cuda else 1024]
    return [64, 1024]


def gemm_flops(G: Generator, D: Discriminator, batch: int) -> float:
    """GEMM FLOPs of one step as the step's math defines them (2*B*K*N per product).

    D update: D forward on 3B rows (real, fake, mismatched; 2B with one modality, where no row can be
    mismatched), its weight gradients, and input gradients of every layer but the first (data needs
    none). G update: G forward on B rows (counted once; the D update reuses it), D forward on B rows
    and its input gradients (no weight gradients), G's weight gradients and input gradients of every
    layer but the fusion (noise and data need none). The recipe's
    extra products (the MMD's row distances, at most 256 rows) are work, but not counted as useful.
    """

    def layers(model: torch.nn.Module) -> tuple[float, float]:
        kn = [m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
        first = sum(p.in_features * p.out_features for p in model.fusion.proj)
        return float(sum(kn)), float(sum(kn) - first)

    g_all, g_rest = layers(G)
    d_all, d_rest = layers(D)
    d_rows = (3 if len(D.specs) > 1 else 2) * batch
    d_update = d_rows * (d_all + d_all + d_rest)
    g_update = batch * (g_all + d_all + d_all + g_all + g_rest)
    return 2.0 * (d_update + g_update)


def gemm_peak(
    n: int = 2048, repeats: int = 5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """GEMM GFLOP/s of an n^3 matmul in ``dtype`` on ``device``: the best of ``repeats`` (the machine's ceiling)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


ADAM_SLACK = 0.1
UPDATE_RTOL = 1e-3
POLICY_TOL = {"fp32": 1e-5, "bf16": 2e-2}
"""The numerics policy's rtol (and atol, scaled by magnitude) for fp32 and for 16-bit compute."""


def assert_steps_match(
    ref: Step, fast: Step, ref_models: Models, fast_models: Models, inputs: Sequence[StepInputs],
    policy: str = "fp32",
) -> None:
    """Run both steps on ``inputs`` (both models starting identical) and assert that they agree.

    Losses, Adam's moments and step counts: :func:`assert_close_fp32`, the fp32 policy. Parameters and
    the EMA, two checks. Adam divides each gradient element by its own running magnitude, so an element
    whose gradient is at fp32 rounding level (a sum that nearly cancels) gets an update that differs by
    up to lr between two correct implementations that merely sum in another order (inductor's loops vs
    eager kernels). So element-wise the policy plus ``ADAM_SLACK * lr * steps``; and per tensor, the
    update these steps made must agree in norm within ``UPDATE_RTOL``, which catches any systematic
    error (a 1% error in lr, a bias correction, a beta) that the element-wise slack would let through.
    Measured over 4-8 steps of the test, seed-mnist, digits and wide configs: worst element 7.3e-3 of
    lr per step, worst update-norm error 1.4e-5 (margins of 14x and 70x).

    ``policy="bf16"`` (both steps under bf16 autocast) takes the 16-bit tolerance, 2e-2, for every check
    in place of 1e-5 and of ``UPDATE_RTOL``.

    Adam's moments hold gradients summed over the batch's rows, in another order by each implementation;
    the rounding of a sum of n fp32 terms is bounded by n * 2^-24 of its terms' magnitude (Higham), which
    passes 1e-5 at n = 171. So their element-wise tolerance is the larger of the policy and that bound for
    the discriminator's 3B rows (1e-5 up to B = 57; 1.8e-4 at B = 1024), beside the kink allowance of
    :func:`assert_close_but_kinks`; the per-tensor norm check still catches any systematic error.
    """
    tol = POLICY_TOL[policy]
    update_rtol = max(UPDATE_RTOL, tol)
    rows = 3 * max(len(batch.z) for batch in inputs)
    moment_tol = max(tol, rows * 2.0**-24)
    start = {(id(m), name): snapshot(m, name) for m in (ref_models, fast_models) for name in ("G", "D", "ema")}
    for batch in inputs:
        want, got = ref(batch), fast(batch)
        for key in ("loss_d", "loss_g", "skipped"):
            assert_close_fp32(got[key], want[key], key, tol=tol)
    for name, opt_name in (("G", "opt_g"), ("D", "opt_d"), ("ema", "opt_g")):
        opt = getattr(ref_models, opt_name)
        steps = max((float(s["step"]) for s in opt.state.values()), default=0.0)
        slack = ADAM_SLACK * float(opt.param_groups[0]["lr"]) * steps
        a, b = getattr(fast_models, name), getattr(ref_models, name)
        a0, b0 = start[(id(fast_models), name)], start[(id(ref_models), name)]
        for (pname, x), y, x0, y0 in zip(a.named_parameters(), b.parameters(), a0, b0, strict=True):
            assert_close_fp32(x, y, f"{name}.{pname}", slack, tol=tol)
            error, size = ((x - x0) - (y - y0)).norm().item(), (y - y0).norm().item()
            assert error <= update_rtol * size, f"{name}.{pname}: update differs by {error:.3g} (norm {size:.3g})"
    for name in ("opt_g", "opt_d"):
        a, b = getattr(fast_models, name).state_dict()["state"], getattr(ref_models, name).state_dict()["state"]
        for i in b:
            assert_close_fp32(a[i]["step"], b[i]["step"], f"{name}[{i}].step", tol=tol)
            for key in ("exp_avg", "exp_avg_sq"):
                assert_close_but_kinks(a[i][key], b[i][key], f"{name}[{i}].{key}", tol=moment_tol)


KINK_SHARE = 0.05
KINK_NORM_RTOL = 1e-3


def assert_close_but_kinks(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """:func:`assert_close_fp32`, except that up to ``KINK_SHARE`` of the elements may differ more when the
    whole tensor still agrees within ``KINK_NORM_RTOL`` in norm.

    Why: two correct implementations round a pre-activation differently in its last bit; one that lies
    within that rounding of 0 takes the other side of the leaky-ReLU kink in one of them, which changes
    that row's gradient by (1 - slope) * dy, a discrete difference no tolerance on rounding covers. Over
    thousands of rows a few such flips happen, and elements whose batch sum nearly cancels keep little
    relative precision in either implementation (seen: 1 of 256 bias-gradient elements of seed-mnist at
    batch 1024, off by 3e-4 of the largest; 2.9% of the wide generator head's first moments at batch
    1024, each within 7e-4 of the largest, the tensor within 3.3e-4 in norm). A systematic error (a wrong
    beta, a missing term) moves every element and the norm, and still fails.
    """
    atol = tol * expected.detach().abs().max().item()
    close = torch.isclose(actual, expected, rtol=tol, atol=atol)
    if bool(close.all()):
        return
    share = 1.0 - close.float().mean().item()
    norm_error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    if share <= KINK_SHARE and norm_error <= KINK_NORM_RTOL:
        return
    assert_close_fp32(actual, expected, f"{what} ({share:.2%} of elements off, norm error {norm_error:.2g})", tol=tol)


def snapshot(models: Models, name: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in getattr(models, name).parameters()]


def assert_close_fp32(
    actual: torch.Tensor, expected: torch.Tensor, what: str, slack: float = 0.0, tol: float = 1e-5
) -> None:
    """rtol ``tol`` and atol ``tol`` times the reference's largest magnitude (the fp32 policy of the design
    notes at the default 1e-5, scaled per tensor so small tensors such as Adam's second moments keep their
    own scale), plus ``slack``."""
    atol = tol * expected.detach().abs().max().item() + slack
    torch.testing.assert_close(actual, expected, rtol=tol, atol=atol, msg=lambda m: f"{what}: {m}")


@dataclass
class Row:
    """One config and batch: ms per step of each implementation, and the compiled step's speed-up over each
    (median of per-round ratios); the hand-written columns are None where there is no plain-MLP peer."""

    name: str
    batch: int
    hand_ms: float | None
    vs_hand: float | None
    hand_compiled_ms: float | None
    vs_hand_compiled: float | None
    ref_ms: float
    vs_ref: float
    fast_ms: float
    samples_per_s: float
    gflops: float
    peak_share: float
    compile_s: float


def time_interleaved(
    steps: dict[str, Step], inputs: Sequence[StepInputs], rounds: int, per_round: int, device
) -> dict[str, list[float]]:
    """ms per step of each of ``steps`` in each of ``rounds`` rounds; within a round every step runs
    ``per_round`` times in turn, the order rotating from round to round, so a busy machine slows all alike."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            for i in range(per_round):
                steps[name](inputs[i % len(inputs)])
            _sync(device)
            times[name].append((time.perf_counter() - start) / per_round * 1e3)
    return times


def median_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median over rounds of slow / fast (the speed-up of ``fast``), robust to a round that hit noise."""
    return statistics.median(a / b for a, b in zip(slow, fast, strict=True))


class HandwrittenGAN:
    """The MLP GAN a user writes by hand from the seeds: ``nn.Sequential`` of ``nn.Linear`` + ``nn.LeakyReLU``,
    a sigmoid output, BCE-with-logits, ``torch.optim.Adam``, D judging real and fake in two passes and the
    G update backpropagating through D (which also fills D's gradients, as such loops do).

    Same layer widths, initial weights (copied from fastmmgan's models) and Adam settings as the config, so
    the timing compares implementations of one architecture. ``compile_modules`` wraps G and D in
    ``torch.compile`` as a user would try next. Works on one-modality data (the seeds' setting).
    """

    def __init__(self, models: Models, cfg: TrainConfig, compile_modules: bool = False) -> None:
        G, D = models.G, models.D
        if G.conditional or D.mbstd_group or len(D.specs) != 1:
            raise ValueError("the hand-written peer is the seeds' unconditional MLP GAN: one modality, no stddev feature")
        g_layers = [G.fusion.proj[0], *G.body, G.head]
        d_layers = [D.fusion.proj[0], *D.body[0:1], *D.body[1], D.head]
        self.G = self._sequential(g_layers, [G.fusion.bias, *(m.bias for m in g_layers[1:])], torch.nn.Sigmoid())
        self.D = self._sequential(d_layers, [D.fusion.bias, *(m.bias for m in d_layers[1:])], None)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr or cfg.lr, betas=cfg.betas)
        self.run_g = torch.compile(self.G) if compile_modules else self.G
        self.run_d = torch.compile(self.D) if compile_modules else self.D

    @staticmethod
    def _sequential(layers, biases, last: torch.nn.Module | None) -> torch.nn.Sequential:
        modules: list[torch.nn.Module] = []
        for i, (layer, bias) in enumerate(zip(layers, biases, strict=True)):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, device=layer.weight.device)
            with torch.no_grad():
                linear.weight.copy_(layer.weight)
                linear.bias.copy_(bias)
            modules.append(linear)
            if i < len(layers) - 1:
                modules.append(torch.nn.LeakyReLU(0.2))
        if last is not None:
            modules.append(last)
        return torch.nn.Sequential(*modules)

    def __call__(self, batch: StepInputs) -> dict[str, torch.Tensor]:
        real, z = batch.real[0], batch.z
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        fake = self.run_g(z)
        real_logits, fake_logits = self.run_d(real), self.run_d(fake.detach())
        loss_d = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        judged = self.run_d(fake)
        loss_g = bce(judged, torch.ones_like(judged))
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


def handwritten_peers(models: Models, cfg: TrainConfig) -> dict[str, HandwrittenGAN]:
    """The hand-written loop, eager and with ``torch.compile``, from copies of ``models``; empty where the
    config has no plain-MLP equivalent (more than one modality, the stddev feature)."""
    try:
        return {"hand-written": HandwrittenGAN(models.copy(cfg), cfg),
                "hand-written-compiled": HandwrittenGAN(models.copy(cfg), cfg, compile_modules=True)}
    except ValueError:
        return {}


def bench_config(
    bc: BenchConfig, batch: int, peak: float, device: torch.device, rounds: int = 11, check_steps: int = 3
) -> Row:
    """Check the compiled step against the reference, then time it interleaved with the reference step and,
    for one-modality configs, the hand-written loop eager and with torch.compile (see the module docstring)."""
    cfg = replace(bc.cfg, batch_size=batch)
    ds = bc.data(batch)
    models = build_models(ds, cfg, device)
    twin = models.copy(cfg)
    peers = handwritten_peers(models, cfg)
    ref, fast = make_steps(models, twin, cfg, device=device)
    inputs = [draw_step_inputs(ds, i, cfg).to(device) for i in range(8)]
    policy = "fp32" if fast.amp_dtype is None else "bf16"
    assert_steps_match(ref, fast, models, twin, inputs[:check_steps], policy=policy)
    for peer in peers.values():  # compile and warm up outside the timed rounds
        for batch_in in inputs[:3]:
            peer(batch_in)
    per_round = max(2, min(20, int(2000 / batch)))
    times = time_interleaved({"ref": ref, "fast": fast, **peers}, inputs, rounds, per_round, device)
    fast_ms = statistics.median(times["fast"])
    gflops = gemm_flops(models.G, models.D, batch) / fast_ms / 1e6

    def versus(name: str) -> tuple[float | None, float | None]:
        if name not in times:
            return None, None
        return statistics.median(times[name]), median_ratio(times[name], times["fast"])

    return Row(
        bc.name, batch, *versus("hand-written"), *versus("hand-written-compiled"), *versus("ref"), fast_ms,
        batch / fast_ms * 1e3, gflops, gflops / peak, fast.compile_seconds,
    )


def format_table(rows: Sequence[Row], peak: float, device: str, dtype: torch.dtype = torch.float32, n: int = 2048) -> str:
    """The markdown table: speed-up over the hand-written loop first, then over its compiled variant and
    over the reference step, then ms per step of each, samples/s, useful GFLOP/s and share of the peak."""
    name = str(dtype).removeprefix("torch.")

    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}x"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    head = (
        f"device: {device}; {name} GEMM peak ({n}^3 matmul, best of the run): {peak:.0f} GFLOP/s\n"
        "| config | batch | vs hand-written | vs hand-written + torch.compile | vs reference step | hand-written ms | "
        "hand-written + compile ms | reference ms | compiled ms | samples/s | useful GFLOP/s | of peak | compile s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r.name} | {r.batch} | {ratio(r.vs_hand)} | {ratio(r.vs_hand_compiled)} | {ratio(r.vs_ref)} | "
        f"{ms(r.hand_ms)} | {ms(r.hand_compiled_ms)} | {r.ref_ms:.2f} | {r.fast_ms:.2f} | {r.samples_per_s:,.0f} | "
        f"{r.gflops:.1f} | {r.peak_share:.0%} | {r.compile_s:.1f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastmmgan.bench", description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 64 and 1024; wide: 4096 on a GPU, 1024 on a CPU)")
    p.add_argument("--rounds", type=int, default=11, help="timed rounds per config (each times both steps)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    # The peak in the dtype the step's GEMMs run in (bf16 under the CUDA step's autocast), large enough
    # to saturate the device.
    dtype = autocast_dtype(TrainConfig.precision, device) or torch.float32
    n = 8192 if cuda else 2048
    peak = gemm_peak(n=n, device=device, dtype=dtype)
    rows = []
    for name in args.configs:
        for batch in args.batch or default_batches(name, cuda):
            torch._dynamo.reset()
            rows.append(bench_config(CONFIGS[name], batch, peak, device, rounds=args.rounds))
            peak = max(peak, gemm_peak(n=n, device=device, dtype=dtype))
            r = rows[-1]
            hand = "" if r.vs_hand is None else f"{r.vs_hand:.2f}x the hand-written loop, "
            print(f"{name} batch {batch}: {hand}{r.vs_ref:.2f}x the reference step", flush=True)
    for row in rows:
        row.peak_share = row.gflops / peak
    print(format_table(rows, peak, device_name(device), dtype, n))
    if "wide" in args.configs and not cuda and not args.batch:
        print("wide runs at batch 1024 on a CPU; its batch 4096 is for GPUs (--batch 4096 to force it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
