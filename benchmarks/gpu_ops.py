"""The fused Triton ops against what a user would otherwise run (cuBLAS + a separate leaky-ReLU), on one CUDA GPU.

Run: ``python benchmarks/gpu_ops.py --out report_ops.md [--quick]``. Without a CUDA GPU it prints one
line and exits 0. It writes one markdown report, rewritten after every case, so a run killed by a
timeout still leaves the cases done so far.

For each case (op, dtype, batch B, width):

1. Numerics first: forward and the gradients (dx, dW, db via ``torch.autograd.grad`` with a random dy)
   of the Triton op against the reference computed in fp32 (TF32 off) from the same rounded inputs.
   fp32: rtol = 1e-5, atol = 1e-5 * max(1, |ref|.max()); bf16: rtol = 2e-2, atol = 2e-2 * max(1, |ref|.max())
   against the fp32 reference cast to bf16. The reference run in the case's dtype (cuBLAS) is measured
   against the same bound, for scale. Only cases that pass are timed. dy is zeroed where the fp32
   pre-activation lies within KINK_MARGIN of 0: there lrelu' jumps from 1 to the slope and the last bit
   of rounding decides the side (for cuBLAS as much as for Triton), which would turn one flipped element
   into an O(1) gradient error.
2. Timing, reference and Triton interleaved round by round (their order alternating), medians over the
   rounds, forward-only and forward+backward, two modes: ``eager`` (a loop of calls, CUDA events) and
   ``graph`` (the calls captured once in a ``torch.cuda.CUDAGraph``, replays timed with events). Warm-up
   (which includes Triton's autotuning) always comes before timing and before capture.

TFLOP/s counts the nominal GEMM work of forward+backward (3 x 2*B*N*sum(K)) over the Triton fwd+bwd time;
"of peak" divides it by the best n^3 matmul of the same dtype measured in this run (TF32 off for fp32).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

SLOPE = 0.2
PEAK_N = 8192
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# (rtol, atol) before the atol is scaled by max(1, |ref|.max()); the project's numerics policy.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-2, 2e-2)}
# Targets of the fused ops (bf16, graph replay): width -> minimum reference/Triton speed ratio.
TARGET_SMALL_WIDTH = 128
TARGETS_TEXT = (
    "Targets (bf16, graph replay, both fwd and fwd+bwd ratios): >= 1.0x cuBLAS + leaky-ReLU at width >= 256, "
    ">= 1.5x at width <= 128. The target column says met/missed for those rows, '-' for the others."
)
KINK_MARGIN = 1e-2  # pre-activations are O(1) by construction (see make_problem)
ROUND_TARGET_S = 2e-3  # GPU time aimed at per timed measurement; iteration counts follow from it
MAX_CALLS = 200
GRAPH_CALLS = 20  # op calls captured in one graph


def target_ratio(width: int) -> float:
    """The speed ratio a bf16 graph-replay row must reach at ``width``."""
    return 1.5 if width <= TARGET_SMALL_WIDTH else 1.0


@dataclass(frozen=True)
class Case:
    """One op, dtype and shape."""

    op: str  # "fused_dense" | "shared_projection"
    dtype: str  # key of DTYPES
    batch: int
    width: int

    def ks(self) -> tuple[int, ...]:
        """Input widths K_m: one for fused_dense, four modalities for shared_projection."""
        if self.op == "fused_dense":
            return (self.width,)
        return (self.width, self.width // 2, 64, 25)

    def fwd_flops(self) -> float:
        return 2.0 * self.batch * self.width * sum(self.ks())


@dataclass
class Timing:
    """Median microseconds per call of reference and Triton, forward and forward+backward, in one mode."""

    mode: str  # "eager" | "graph"
    fwd_ref: float = math.nan
    fwd_tri: float = math.nan
    fb_ref: float = math.nan
    fb_tri: float = math.nan
    error: str = ""


@dataclass
class Result:
    """Everything measured for one case."""

    case: Case
    passed: bool | None = None  # None: not checked (error before or skipped)
    numerics: str = ""  # worst tensor and errors, for the numerics table
    timings: list[Timing] = field(default_factory=list)
    error: str = ""
    note: str = "not run (yet)"  # shown while passed is None


# ---------------------------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """Inputs of one case and a uniform way to call either implementation on them."""

    case: Case
    xs: list[torch.Tensor]
    weights: list[torch.Tensor]
    bias: torch.Tensor
    mask: torch.Tensor | None
    dy: torch.Tensor

    @property
    def params(self) -> list[torch.Tensor]:
        """The differentiated tensors, in gradient order: xs, weights, bias."""
        return [*self.xs, *self.weights, self.bias]

    def names(self) -> list[str]:
        m = len(self.xs)
        if m == 1:
            return ["y", "dx", "dW", "db"]
        return ["y", *(f"dx{i}" for i in range(m)), *(f"dW{i}" for i in range(m)), "db"]

    def call(self, impls: dict[str, Callable], params: Sequence[torch.Tensor], slope: float = SLOPE) -> torch.Tensor:
        """Run the case's op from ``impls`` ({op: fn}) on ``params`` (same layout as :attr:`params`)."""
        m = len(self.xs)
        xs, weights, bias = list(params[:m]), list(params[m : 2 * m]), params[-1]
        if self.case.op == "fused_dense":
            return impls["fused_dense"](xs[0], weights[0], bias, slope)
        return impls["shared_projection"](xs, weights, bias, self.mask, slope)


def make_problem(case: Case, device: torch.device, seed: int = 0) -> Problem:
    """Random inputs in the case's dtype, scaled so y and the gradients stay O(1) .. O(sqrt(B))."""
    torch.manual_seed(seed)
    dtype = DTYPES[case.dtype]
    ks = case.ks()

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device) * scale).to(dtype).requires_grad_()

    xs = [leaf(case.batch, k) for k in ks]
    weights = [leaf(case.width, k, scale=k**-0.5) for k in ks]
    bias = leaf(case.width, scale=0.1)
    mask = None if len(ks) == 1 else torch.rand(case.batch, len(ks), device=device) < 0.7
    dy = torch.randn(case.batch, case.width, device=device).to(dtype)
    return Problem(case, xs, weights, bias, mask, dy)


def forward_backward(problem: Problem, impls: dict[str, Callable], params: Sequence[torch.Tensor],
                     dy: torch.Tensor) -> list[torch.Tensor]:
    """[y, *grads of params] for one call."""
    y = problem.call(impls, params)
    return [y.detach(), *torch.autograd.grad(y, list(params), dy)]


# ---------------------------------------------------------------------------------------------- numerics


def compare(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(max |got - want|, worst |got - want| / (atol + rtol |want|)); the second <= 1 passes; nan if not finite."""
    rtol, atol = TOLERANCES[dtype]
    atol *= max(1.0, want.float().abs().max().item())
    if not bool(torch.isfinite(got).all()):
        return math.nan, math.nan
    want = want.to(dtype).float()  # the fp32 reference rounded as the op's output is (a no-op for fp32)
    diff = (got.float() - want).abs()
    return diff.max().item(), (diff / (atol + rtol * want.abs())).max().item()


def quiet_kinks(problem: Problem, ref_impls: dict[str, Callable]) -> None:
    """Zero ``problem.dy`` where the fp32 pre-activation is within KINK_MARGIN of the kink of leaky-ReLU."""
    with torch.no_grad():
        exact = [p.detach().float() for p in problem.params]
        pre = problem.call(ref_impls, exact, slope=1.0)  # leaky-ReLU with slope 1 is the identity
        problem.dy[pre.abs() < KINK_MARGIN] = 0


def check_numerics(problem: Problem, triton_impls: dict[str, Callable], ref_impls: dict[str, Callable]) -> tuple[bool, str]:
    """Triton (and the reference in the case's dtype, for scale) against the fp32 reference; (passed, summary)."""
    dtype = DTYPES[problem.case.dtype]
    exact_params = [p.detach().float().requires_grad_() for p in problem.params]
    want = forward_backward(problem, ref_impls, exact_params, problem.dy.float())
    got = forward_backward(problem, triton_impls, problem.params, problem.dy)
    baseline = forward_backward(problem, ref_impls, problem.params, problem.dy)
    worst_name, worst, worst_abs, worst_base = "", -1.0, 0.0, 0.0
    for name, g, w, b in zip(problem.names(), got, want, baseline):
        abs_err, rel = compare(g, w, dtype)
        _, base_rel = compare(b, w, dtype)
        if math.isnan(rel) or rel > worst:
            worst_name, worst, worst_abs, worst_base = name, rel, abs_err, base_rel
        if math.isnan(rel):
            break
    passed = not math.isnan(worst) and worst <= 1.0
    summary = f"{worst_name}: max err {worst_abs:.2e}, err/tol {worst:.2f} (reference in {problem.case.dtype}: {worst_base:.2f})"
    return passed, summary


# ---------------------------------------------------------------------------------------------- timing


def _events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def time_calls(fn: Callable[[], object], calls: int) -> float:
    """Microseconds per call of ``calls`` back-to-back calls, from CUDA events around the loop."""
    torch.cuda.synchronize()
    start, end = _events()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def calls_for(us_per_call: float) -> int:
    """How many calls fill about ROUND_TARGET_S of GPU time (at least 3, at most MAX_CALLS)."""
    return int(min(MAX_CALLS, max(3, ROUND_TARGET_S * 1e6 / max(us_per_call, 1e-3))))


def capture(fn: Callable[[], object], calls: int) -> torch.cuda.CUDAGraph:
    """A graph of ``calls`` calls of ``fn``, after a warm-up on a side stream (as the torch CUDA-graph docs do)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return graph


def interleaved(ref: Callable[[], float], tri: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Median of ``rounds`` measurements of each, alternating which goes first, so drift hits both alike."""
    ref_t: list[float] = []
    tri_t: list[float] = []
    for r in range(rounds):
        pairs = ((ref, ref_t), (tri, tri_t)) if r % 2 == 0 else ((tri, tri_t), (ref, ref_t))
        for measure, acc in pairs:
            acc.append(measure())
    return statistics.median(ref_t), statistics.median(tri_t)


def step_fns(problem: Problem, ref_impls: dict[str, Callable], tri_impls: dict[str, Callable]) -> dict[str, Callable]:
    """Zero-argument calls: {fwd,fb}_{ref,tri}; fwd runs under no_grad, fb returns y and every gradient."""
    params = problem.params

    def fwd(impls: dict[str, Callable]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return problem.call(impls, params)
        return run

    def fb(impls: dict[str, Callable]) -> Callable[[], object]:
        return lambda: forward_backward(problem, impls, params, problem.dy)

    return {"fwd_ref": fwd(ref_impls), "fwd_tri": fwd(tri_impls), "fb_ref": fb(ref_impls), "fb_tri": fb(tri_impls)}


def time_eager(fns: dict[str, Callable], rounds: int) -> Timing:
    """Eager loops of calls: host overhead (dispatch, launches) included, as a user's eager loop pays it."""
    t = Timing("eager")
    for kind in ("fwd", "fb"):
        ref, tri = fns[f"{kind}_ref"], fns[f"{kind}_tri"]
        for fn in (ref, tri):  # warm-up: caches, cuBLAS heuristics, autotuner lookups
            time_calls(fn, 3)
        n_ref, n_tri = calls_for(time_calls(ref, 3)), calls_for(time_calls(tri, 3))
        r, m = interleaved(functools.partial(time_calls, ref, n_ref), functools.partial(time_calls, tri, n_tri), rounds)
        setattr(t, f"{kind}_ref", r)
        setattr(t, f"{kind}_tri", m)
    return t


def time_graph(fns: dict[str, Callable], rounds: int) -> Timing:
    """CUDA-graph replay: GRAPH_CALLS calls per graph, replays per measurement to fill ROUND_TARGET_S."""
    t = Timing("graph")
    for kind in ("fwd", "fb"):
        graphs = {who: capture(fns[f"{kind}_{who}"], GRAPH_CALLS) for who in ("ref", "tri")}
        measures = []
        for who in ("ref", "tri"):
            replay = graphs[who].replay
            replay()
            per_replay_s = time_calls(replay, 2) * 1e-6
            replays = max(1, min(50, round(ROUND_TARGET_S / max(per_replay_s, 1e-7))))
            measures.append(functools.partial(time_calls, replay, replays))
        r, m = interleaved(*measures, rounds)
        setattr(t, f"{kind}_ref", r / GRAPH_CALLS)
        setattr(t, f"{kind}_tri", m / GRAPH_CALLS)
        del graphs, measures
    return t


# ---------------------------------------------------------------------------------------------- cases


def default_cases(quick: bool) -> list[Case]:
    """Cases in priority order (a time budget cuts the tail): bf16 first, the targets' widths first."""
    if quick:
        return [
            Case("fused_dense", "bf16", 64, 128),
            Case("fused_dense", "bf16", 4096, 128),
            Case("fused_dense", "bf16", 1024, 256),
            Case("fused_dense", "bf16", 4096, 1024),
            Case("shared_projection", "bf16", 1024, 256),
            Case("fused_dense", "fp32", 1024, 256),
        ]
    cases = []
    for dtype in ("bf16", "fp32"):
        cases += [Case("fused_dense", dtype, b, w) for w in (128, 256, 1024) for b in (64, 1024, 4096)]
        cases += [Case("shared_projection", dtype, b, w) for w in (256, 1024) for b in (64, 1024, 4096)]
    return cases


def run_case(case: Case, device: torch.device, ref_impls: dict[str, Callable], tri_impls: dict[str, Callable],
             rounds: int) -> Result:
    """Numerics, then (if they pass) eager and graph timings; errors are caught and recorded per stage."""
    result = Result(case)
    try:
        problem = make_problem(case, device)
        quiet_kinks(problem, ref_impls)
        result.passed, result.numerics = check_numerics(problem, tri_impls, ref_impls)
    except Exception as exc:  # one case failing must not stop the others
        result.error = f"numerics: {type(exc).__name__}: {exc}"
        return result
    if not result.passed:
        return result
    fns = step_fns(problem, ref_impls, tri_impls)
    for mode, timer in (("eager", time_eager), ("graph", time_graph)):
        try:
            result.timings.append(timer(fns, rounds))
        except Exception as exc:  # e.g. a graph capture that fails: keep the other mode's row
            result.timings.append(Timing(mode, error=f"{type(exc).__name__}: {exc}"))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------- report


def _us(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.1f}"


def _ratio(ref: float, tri: float) -> str:
    return "" if math.isnan(ref) or math.isnan(tri) or tri <= 0 else f"{ref / tri:.2f}x"


def _cell(text: str, limit: int = 160) -> str:
    """Text made safe for one markdown table cell."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def target_verdict(case: Case, t: Timing) -> str:
    """'met' / 'missed (...)' for bf16 graph rows, '-' for rows without a target."""
    if case.dtype != "bf16" or t.mode != "graph" or t.error:
        return "-"
    need = target_ratio(case.width)
    short = [name for name, ref, tri in (("fwd", t.fwd_ref, t.fwd_tri), ("fwd+bwd", t.fb_ref, t.fb_tri))
             if not (tri > 0 and ref / tri >= need)]
    return f"met (>= {need:.1f}x)" if not short else f"**missed** {', '.join(short)} (>= {need:.1f}x)"


COLUMNS = ("op", "dtype", "B", "width", "mode", "pass", "fwd ref us", "fwd triton us", "fwd ratio", "fwd+bwd ref us",
           "fwd+bwd triton us", "fwd+bwd ratio", "triton TFLOP/s", "of peak", "target")


def table_rows(result: Result, peaks: dict[str, float]) -> list[str]:
    """Markdown rows of one case: one per timing mode, or one FAIL / ERROR / skipped row."""
    c = result.case
    head = [c.op, c.dtype, str(c.batch), str(c.width)]
    blank = [""] * (len(COLUMNS) - 6)
    if result.error:
        return ["| " + " | ".join([*head, "-", _cell("ERROR " + result.error), *blank]) + " |"]
    if result.passed is None:
        return ["| " + " | ".join([*head, "-", result.note, *blank]) + " |"]
    if not result.passed:
        return ["| " + " | ".join([*head, "-", _cell("**FAIL** " + result.numerics), *blank]) + " |"]
    lines = []
    for t in result.timings:
        if t.error:
            lines.append("| " + " | ".join([*head, t.mode, _cell("ok; timing ERROR " + t.error), *blank]) + " |")
            continue
        tflops = 3 * c.fwd_flops() / (t.fb_tri * 1e-6) / 1e12 if t.fb_tri > 0 else math.nan
        peak = peaks.get(c.dtype, math.nan)
        cells = [*head, t.mode, "ok", _us(t.fwd_ref), _us(t.fwd_tri), _ratio(t.fwd_ref, t.fwd_tri), _us(t.fb_ref),
                 _us(t.fb_tri), _ratio(t.fb_ref, t.fb_tri), "" if math.isnan(tflops) else f"{tflops:.1f}",
                 "" if math.isnan(tflops / peak) else f"{tflops / peak:.1%}", target_verdict(c, t)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_report(results: Sequence[Result], peaks: dict[str, float], header: str, elapsed_s: float, done: bool) -> str:
    """The whole markdown report: header, timing table, targets, numerics table."""
    align = ["---"] * 6 + ["---:"] * (len(COLUMNS) - 7) + ["---"]
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    for result in results:
        lines += table_rows(result, peaks)
    lines += ["", TARGETS_TEXT, "", summary_line(results, elapsed_s, done), "", "Numerics (worst tensor of each case):", "",
              "| op | dtype | B | width | pass | worst |", "|---|---|---:|---:|---|---|"]
    for r in results:
        c = r.case
        verdict = "ERROR" if r.error else {True: "ok", False: "**FAIL**", None: r.note}[r.passed]
        lines.append(f"| {c.op} | {c.dtype} | {c.batch} | {c.width} | {verdict} | {_cell(r.error or r.numerics, 300)} |")
    return "\n".join(lines) + "\n"


def summary_line(results: Sequence[Result], elapsed_s: float, done: bool) -> str:
    """One line: counts of passed / failed / errors / skipped cases and bf16 graph targets met."""
    n_pass = sum(r.passed is True and not r.error for r in results)
    n_fail = sum(r.passed is False for r in results)
    n_err = sum(bool(r.error) for r in results)
    n_skip = sum(r.passed is None and not r.error for r in results)
    verdicts = [target_verdict(r.case, t) for r in results for t in r.timings]
    met = sum(v.startswith("met") for v in verdicts)
    due = sum(v != "-" for v in verdicts)
    state = "" if done else " (incomplete: still running or killed)"
    return (f"gpu_ops: {len(results)} cases: {n_pass} pass, {n_fail} FAIL, {n_err} error, {n_skip} skipped; "
            f"bf16 graph targets met {met}/{due}; {elapsed_s:.0f} s{state}")


# ---------------------------------------------------------------------------------------------- main


def set_fp32_ieee() -> None:
    """TF32 off for fp32 matmuls. The new API when present; never the legacy flag after it (torch raises on the mix)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False


def measure_peak(dtype: torch.dtype, n: int = PEAK_N, repeats: int = 5) -> float:
    """TFLOP/s of the best of ``repeats`` n^3 matmuls in ``dtype`` (after one warm-up)."""
    a = torch.randn(n, n, device="cuda").to(dtype)
    b = torch.randn(n, n, device="cuda").to(dtype)
    product = functools.partial(torch.matmul, a, b)
    product()
    best = min(time_calls(product, 1) for _ in range(repeats))
    return 2.0 * n**3 / (best * 1e-6) / 1e12


def header_text(peaks: dict[str, float], quick: bool, rounds: int) -> str:
    import triton

    props = torch.cuda.get_device_properties(0)
    peak_text = ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in peaks.items())
    return (
        f"## Fused ops vs cuBLAS + leaky-ReLU ({'quick' if quick else 'full'} run)\n\n"
        f"Device: {torch.cuda.get_device_name()} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs); "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
        f"python {platform.python_version()}.  \n"
        f"Measured peaks ({PEAK_N}^3 matmul, best of the run; fp32 with TF32 off): {peak_text}.  \n"
        f"Times: median us per call over {rounds} interleaved rounds; ratio = reference / Triton (> 1: Triton faster); "
        "eager = loop of calls (host overhead included), graph = CUDA-graph replay of "
        f"{GRAPH_CALLS} captured calls. TFLOP/s: nominal fwd+bwd GEMM work over the Triton fwd+bwd time."
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="markdown report to write")
    p.add_argument("--quick", action="store_true", help="a small subset of the cases")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per measurement")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new case after this many seconds (default 120 quick, 200 full)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_ops: needs a CUDA GPU; none found, nothing run")
        return 0
    try:
        return run(args)
    except Exception:  # e.g. the kernels do not import: the report says why instead of being absent
        text = traceback.format_exc()
        with open(args.out, "w") as f:
            f.write(f"## Fused ops: the benchmark itself failed\n\n```\n{text}```\n")
        print(text, file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    """Peaks, then every case in priority order until the time budget is spent; the report after each case."""
    rounds = max(1, args.rounds)
    budget = args.budget_s if args.budget_s is not None else (120.0 if args.quick else 200.0)
    t0 = time.monotonic()

    from fastmmgan.kernels import fused_dense_triton, shared_projection_triton
    from fastmmgan.ops import fused_dense_reference, shared_projection_reference

    ref_impls = {"fused_dense": fused_dense_reference, "shared_projection": shared_projection_reference}
    tri_impls = {"fused_dense": fused_dense_triton, "shared_projection": shared_projection_triton}
    set_fp32_ieee()
    device = torch.device("cuda")
    cases = default_cases(args.quick)
    peaks = {name: measure_peak(DTYPES[name]) for name in sorted({c.dtype for c in cases})}
    header = header_text(peaks, args.quick, rounds)
    print(header, flush=True)
    results = [Result(c) for c in cases]

    def write(done: bool) -> None:
        """Rewrite the report whole (temp file + rename, so a kill mid-write leaves the previous one)."""
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            f.write(format_report(results, peaks, header, time.monotonic() - t0, done))
        os.replace(tmp, args.out)

    write(done=False)
    for i, case in enumerate(cases):
        if time.monotonic() - t0 > budget:
            print(f"time budget of {budget:.0f} s spent: {len(cases) - i} cases skipped", flush=True)
            for r in results[i:]:
                r.note = "skipped (time budget)"
            break
        case_t0 = time.monotonic()
        results[i] = run_case(case, device, ref_impls, tri_impls, rounds)
        for line in table_rows(results[i], peaks):
            print(line, f"({time.monotonic() - case_t0:.1f} s)", flush=True)
        write(done=False)
    write(done=True)
    print(summary_line(results, time.monotonic() - t0, True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
