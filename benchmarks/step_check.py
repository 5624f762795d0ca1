"""Checking a fast training step against the eager reference: the numerics policy's tolerances, applied to
losses, weights, the EMA and Adam's state after the same steps from the same initial weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fastmmgan.build import Models
from fastmmgan.config import TrainConfig
from fastmmgan.step import CompiledStep, Recipe, ReferenceStep, StepInputs, autocast_dtype

Step = Callable[[StepInputs], dict[str, torch.Tensor]]


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
    update these steps made must agree in norm within ``UPDATE_RTOL`` (:func:`assert_update_close`), which
    catches any systematic error (a 1% error in lr, a bias correction, a beta) that the element-wise slack
    would let through.
    Measured over 4-8 steps of the test, seed-mnist, digits and wide configs: worst element 7.3e-3 of
    lr per step, worst update-norm error 1.4e-5 (margins of 14x and 70x); beyond that, an element whose
    gradient cancels to rounding level may see Adam's update turned round (:func:`assert_close_but_flips`).

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
        lr = float(opt.param_groups[0]["lr"])
        slack, flip = ADAM_SLACK * lr * steps, 2.0 * lr * steps
        a, b = getattr(fast_models, name), getattr(ref_models, name)
        a0, b0 = start[(id(fast_models), name)], start[(id(ref_models), name)]
        for (pname, x), y, x0, y0 in zip(a.named_parameters(), b.parameters(), a0, b0, strict=True):
            assert_close_but_flips(x, y, f"{name}.{pname}", slack, flip, tol=tol)
            assert_update_close(x, y, x0, y0, f"{name}.{pname}", slack, tol, update_rtol)
    for name in ("opt_g", "opt_d"):
        a, b = getattr(fast_models, name).state_dict()["state"], getattr(ref_models, name).state_dict()["state"]
        for i in b:
            assert_close_fp32(a[i]["step"], b[i]["step"], f"{name}[{i}].step", tol=tol)
            for key in ("exp_avg", "exp_avg_sq"):
                assert_close_but_kinks(a[i][key], b[i][key], f"{name}[{i}].{key}", tol=moment_tol)


def assert_update_close(
    actual: torch.Tensor, expected: torch.Tensor, actual0: torch.Tensor, expected0: torch.Tensor, what: str,
    slack: float, tol: float, rtol: float,
) -> None:
    """The update a tensor took (``actual - actual0`` against ``expected - expected0``) agrees in norm within
    ``rtol``, over the elements within :func:`assert_close_fp32`'s bounds: the turned-round Adam updates that
    :func:`assert_close_but_flips` lets through (at most 1 element in 10^4, each within 2 lr per step) stay out,
    since one of them alone is 0.1% of a 65k-element tensor's whole update (seen on the digits generator's
    first fusion projection). A systematic error (a 1% error in lr) moves every element and still shows."""
    kept = ~off_bounds(actual, expected, slack, tol)
    error = ((actual - actual0) - (expected - expected0))[kept].norm().item()
    size = (expected - expected0).norm().item()
    assert error <= rtol * size, f"{what}: update differs by {error:.3g} (norm {size:.3g})"


KINK_SHARE = 0.05
KINK_NORM_RTOL = 1e-3
FLIP_SHARE = 1e-4


def off_bounds(actual: torch.Tensor, expected: torch.Tensor, slack: float, tol: float) -> torch.Tensor:
    """Bool, ``expected``'s shape: the elements outside :func:`assert_close_fp32`'s bounds."""
    atol = tol * expected.detach().abs().max().item() + slack
    return ~torch.isclose(actual.detach(), expected.detach(), rtol=tol, atol=atol)


def share_off(actual: torch.Tensor, expected: torch.Tensor, slack: float, tol: float) -> float:
    """The share of elements outside :func:`assert_close_fp32`'s bounds (0.0: all within)."""
    return off_bounds(actual, expected, slack, tol).float().mean().item()


def assert_close_but_flips(
    actual: torch.Tensor, expected: torch.Tensor, what: str, slack: float, flip: float, tol: float = 1e-5
) -> None:
    """:func:`assert_close_fp32` with ``slack``, except that up to ``FLIP_SHARE`` of the elements may differ by
    up to ``flip`` (2 lr per step: Adam's normalised update turned round).

    Why: Adam's first update is ``lr * sign(g)`` whatever g's size, so an element whose gradient is a sum
    that cancels to rounding level can take opposite signs in two correct implementations (seen: 1 of the
    1M weights of the wide generator's second layer at batch 1024, 0.7 lr apart after 3 steps). The
    per-tensor update-norm check of :func:`assert_steps_match` still catches a systematic error, and so
    does this one: a wrong beta or lr moves far more than one element in 10^4.
    """
    share = share_off(actual, expected, slack, tol)
    if share == 0.0:
        return
    worst = (actual - expected).abs().max().item()
    if share <= FLIP_SHARE and worst <= flip:
        return
    assert_close_fp32(actual, expected, f"{what} ({share:.2g} of elements off, worst {worst:.3g})", slack, tol=tol)


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
    share = share_off(actual, expected, 0.0, tol)
    if share == 0.0:
        return
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
