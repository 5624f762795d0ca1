"""Adam as tensor math: the update the compiled step traces into its graph, equal to torch's fused Adam.

The state stays in the ``torch.optim.Adam`` the run built (:func:`fastmmgan.build.make_optimizer`), so its
``state_dict`` and a checkpoint see exactly what the compiled step updated, and a run may switch between
the compiled step and the eager reference (which calls ``opt.step()``) at any step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class AdamHyper:
    """The constant hyperparameters of one torch.optim.Adam param group (lr is read every step)."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float


def adam_hyper(opt: torch.optim.Optimizer) -> AdamHyper:
    """The hyperparameters of a single-group, plain ``torch.optim.Adam``; ValueError for anything else."""
    if not isinstance(opt, torch.optim.Adam) or len(opt.param_groups) != 1:
        raise ValueError("the compiled step needs a torch.optim.Adam with one param group")
    group = opt.param_groups[0]
    for flag in ("amsgrad", "maximize", "differentiable", "decoupled_weight_decay"):
        if group.get(flag):
            raise ValueError(f"the compiled step does not implement Adam's {flag}=True")
    beta1, beta2 = (float(b) for b in group["betas"])
    return AdamHyper(beta1, beta2, float(group["eps"]), float(group["weight_decay"]))


def adam_state(opt: torch.optim.Optimizer) -> tuple[Tensors, Tensors, Tensors, Tensors]:
    """(params, exp_avg, exp_avg_sq, step) of ``opt``'s one group, lazily created as Adam itself would.

    The state lives in ``opt.state``, so ``opt.state_dict()`` / ``load_state_dict`` (checkpoints, a
    ``--no-compile`` resume) see exactly what the compiled step updates. ``step`` is a 0-d float32
    tensor on the parameter's device (Adam's fused/capturable layout).
    """
    params = list(opt.param_groups[0]["params"])
    m, v, steps = [], [], []
    for p in params:
        state = opt.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif state["step"].device != p.device or state["step"].dtype != torch.float32:
            state["step"] = state["step"].to(p.device, torch.float32)
        m.append(state["exp_avg"])
        v.append(state["exp_avg_sq"])
        steps.append(state["step"])
    return params, m, v, steps


def adam_scalars(step: torch.Tensor, lr: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """[step_size, sqrt(bias_correction2)] (float64 [2]) of the Adam step after ``step`` (0-d), for lr
    (one element), in float64 as the fused Adam kernels compute them."""
    t = step.double() + 1.0
    step_size = lr.double().reshape(()) / (1.0 - beta1**t)
    return torch.stack([step_size, (1.0 - beta2**t).sqrt()])


def adam_update(
    params: Tensors,
    grads: Tensors,
    exp_avg: Tensors,
    exp_avg_sq: Tensors,
    steps: Tensors,
    lr: torch.Tensor,
    hp: AdamHyper,
    ok: torch.Tensor,
) -> tuple[Tensors, torch.Tensor]:
    """One Adam step as tensor math, as torch's fused CPU kernel computes it: the new params and the
    step's :func:`adam_scalars`.

    The step size and bias correction come from the first parameter's step count (torch.optim.Adam
    steps every parameter of a group together, so the counts agree); the rest is in the parameters'
    dtype. Under torch.compile the caller must return the scalars from the graph: a graph output is
    materialised once, where otherwise inductor inlines them into every parameter's fused loop and
    recomputes two float64 ``pow`` per vector of 8 elements (measured: updates 4x slower). Where ``ok``
    (0-d bool) is false nothing changes: the state is written back through ``torch.where`` and the
    returned params equal the old ones.
    """
    scalars = adam_scalars(steps[0], lr, hp.beta1, hp.beta2).to(params[0].dtype)
    step_size, bias2_sqrt = scalars[0], scalars[1]
    new_params = []
    for p, g, m, v, step in zip(params, grads, exp_avg, exp_avg_sq, steps, strict=True):
        if hp.weight_decay:
            g = g + p * hp.weight_decay
        m_new = m * hp.beta1 + g * (1.0 - hp.beta1)
        v_new = v * hp.beta2 + g * g * (1.0 - hp.beta2)
        p_new = p - step_size * m_new / (v_new.sqrt() / bias2_sqrt + hp.eps)
        m.copy_(torch.where(ok, m_new, m))
        v.copy_(torch.where(ok, v_new, v))
        step.copy_(torch.where(ok, step + 1, step))
        new_params.append(torch.where(ok, p_new, p))
    return new_params, scalars
