"""One GAN training step: a discriminator update, then a generator update, then the EMA update.

The random draws of a step (batch, masks, noise) are made by the caller and passed in as a
:class:`StepInputs`, so every implementation of the step sees the same random stream.

Two implementations share the objectives (:func:`discriminator_objective`, :func:`generator_objective`):
:class:`ReferenceStep`, plain eager autograd + ``torch.optim.Adam``, the source of truth; and
:class:`CompiledStep`, the whole step as one ``torch.compile`` graph (see its docstring). Both take their
gradients with standard autograd, so the fused ops' registered backward (the Triton kernels on CUDA) runs
in both, and both run the objectives under the same autocast (:func:`autocast_dtype`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from .adam import adam_hyper, adam_state, adam_update
from .config import COMPILE_BACKENDS, PRECISIONS, TrainConfig
from .distributed import average_grads, gather_rows, in_process_group
from .losses import (
    conditional_diversity_loss,
    conditional_energy_loss,
    discriminator_loss,
    diversity_loss,
    generator_loss,
    gradient_penalty,
    kl_to_prior,
    latent_regression_loss,
    mmd_loss,
    r1_penalty,
    reconstruction_loss,
)
from .modalities import ModalitySpec
from .models import Discriminator, Generator, compose_fake
from .ops import kernels_mode_now, tf32_allowed
from .step_inputs import StepInputs

log = logging.getLogger(__name__)

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """What a step optimises: the GAN loss and the weights of its extra terms (see :class:`TrainConfig`)."""

    loss: str = TrainConfig.loss
    gp_weight: float = TrainConfig.gp_weight
    r1_weight: float = TrainConfig.r1_weight
    diversity_weight: float = TrainConfig.diversity_weight
    mmd_weight: float = TrainConfig.mmd_weight
    cond_diversity_weight: float = TrainConfig.cond_diversity_weight
    energy_weight: float = TrainConfig.energy_weight
    energy_spread: float = TrainConfig.energy_spread
    energy_noise_rows: bool = TrainConfig.energy_noise_rows
    recon_weight: float = TrainConfig.recon_weight
    kl_weight: float = TrainConfig.kl_weight
    latent_weight: float = TrainConfig.latent_weight
    energy_spread_kinds: tuple[str, ...] = tuple(TrainConfig.energy_spread_kinds.split(","))

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Recipe:
        return cls(cfg.loss, cfg.gp_weight, cfg.r1_weight, cfg.diversity_weight, cfg.mmd_weight, cfg.cond_diversity_weight,
                   cfg.energy_weight, cfg.energy_spread, cfg.energy_noise_rows, cfg.recon_weight, cfg.kl_weight,
                   cfg.latent_weight, tuple(cfg.energy_spread_kinds.split(",")))

    def energy_spreads(self, specs: Sequence[ModalitySpec]) -> list[float]:
        """The energy score's spread weight per output modality: :attr:`energy_spread` for the kinds in
        :attr:`energy_spread_kinds`, the proper score's 1 for the others."""
        return [self.energy_spread if s.kind in self.energy_spread_kinds else 1.0 for s in specs]

    @property
    def uses_encoder(self) -> bool:
        return self.recon_weight > 0 or self.latent_weight > 0

    @property
    def draws_twice(self) -> bool:
        """Whether the generator also makes each row from a second noise draw (for the conditional mode-seeking
        term or the energy score)."""
        return self.cond_diversity_weight > 0 or self.energy_weight > 0

    @property
    def differentiates_both_draws(self) -> bool:
        """Whether the loss takes gradients through the second draw too: the conditional mode-seeking term does,
        and so does the energy score next to the encoder (its encoded rows' first draw comes from the posterior,
        the second from the prior, so the two are not exchangeable). The energy score alone does not: its
        gradient through the first draw, doubled, is an unbiased estimate of the whole
        (:func:`~fastmmgan.losses.conditional_energy_loss`'s ``one_sided``), so the second draw runs without
        autograd and its backward pass is saved."""
        return self.cond_diversity_weight > 0 or self.uses_encoder


def generate_twice(
    run: Callable[[torch.Tensor, Sequence[torch.Tensor], torch.Tensor], Sequence[torch.Tensor]],
    z: torch.Tensor, z_alt: torch.Tensor, real: Sequence[torch.Tensor], given: torch.Tensor, recipe: Recipe,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The generator's outputs for the batch (fp32) and, when the recipe :attr:`~Recipe.draws_twice`, its outputs
    for the same conditions from the prior noise ``z_alt`` [B, z_dim]. When the recipe
    :attr:`~Recipe.differentiates_both_draws` both are made in one call on 2B rows; otherwise the second draw
    runs without autograd (a forward pass only: the default step takes 0.86x the time of one differentiated
    2B-row call, 13.1 against 15.3 ms on 2 CPU cores). With one modality no row is ever conditioned, so
    there is no second draw unless the energy score also scores the rows from noise. ``run`` is the generator
    (a module, or the compiled step's functional call of it)."""
    scored = len(real) > 1 or (recipe.energy_noise_rows and recipe.energy_weight > 0)
    if not (recipe.draws_twice and scored):
        return [x.float() for x in run(z, real, given)], None
    if not recipe.differentiates_both_draws:
        generated = [x.float() for x in run(z, real, given)]
        with torch.no_grad():
            alternative = [x.float() for x in run(z_alt, real, given)]
        return generated, alternative
    both = run(torch.cat([z, z_alt]), [torch.cat([x, x]) for x in real], torch.cat([given, given]))
    outputs = [x.float().chunk(2) for x in both]
    return [a for a, _ in outputs], [b for _, b in outputs]


class GeneratorPass(NamedTuple):
    """What one step's generator pass made (see :func:`generator_pass`): its outputs (M tensors [B, dim_m] fp32),
    the outputs for the same conditions from other noise (or None), the noise each row was generated from
    [B, z_dim], and the encoder's terms for the generator's loss (0-d fp32, or None without an encoder)."""

    generated: list[torch.Tensor]
    alternative: list[torch.Tensor] | None
    z: torch.Tensor
    encoder_loss: torch.Tensor | None


def encoded_rows(given: torch.Tensor) -> torch.Tensor:
    """[B] bool: the rows whose noise the encoder takes from their real sample (cVAE-GAN): the conditioned rows
    at even positions. The conditioned rows at odd positions keep prior noise (for latent regression and
    for the discriminator's verdict on prior samples). Under torchrun the positions are each process's own,
    which agree with one process's when every slice starts at an even row (an even per-process batch)."""
    even = torch.arange(given.shape[0], device=given.device) % 2 == 0
    return given.any(dim=1) & even


def generator_pass(
    G: Generator, z: torch.Tensor, z_alt: torch.Tensor, real: Sequence[torch.Tensor], mask: torch.Tensor,
    given: torch.Tensor, recipe: Recipe, conditions: Sequence[torch.Tensor] | None = None,
) -> GeneratorPass:
    """The generator's part of a step, shared by both steps (the compiled one calls it with G's parameters
    swapped in by ``functional_call``).

    Without an encoder: :func:`generate_twice` (``z_alt`` [B, z_dim], prior noise, makes the second draws).
    With one (``G.encoder``, a cVAE-GAN or latent-regression
    weight on): the rows of :func:`encoded_rows` are generated from ``mu + exp(logvar / 2) * z``, the
    encoder's posterior for their real sample (the step's own noise is the reparameterisation's draw), and
    must reconstruct the modalities they were not given (L1) while the posterior stays near the prior (KL);
    the other conditioned rows are generated from z, and the encoder must recover z from their sample
    (latent regression). ``G`` may be wrapped in DistributedDataParallel (the eager step under torchrun).
    ``conditions`` (M tensors [B, dim_m], default ``real``) are what the generator reads for its given
    modalities (``StepInputs.conditions``: with ``--condition-noise`` the real features plus noise); the
    losses and the encoder read ``real``.
    """
    conditions = real if conditions is None else conditions
    encoder = getattr(G, "module", G).encoder if recipe.uses_encoder else None
    if encoder is None:
        generated, alternative = generate_twice(G, z, z_alt, conditions, given, recipe)
        return GeneratorPass(generated, alternative, z, None)
    vae = encoded_rows(given)
    mu, logvar = encoder(real, mask)
    z_used = torch.where(vae[:, None], mu + (0.5 * logvar).exp() * z.float(), z.float()).to(z.dtype)
    generated, alternative = generate_twice(G, z_used, z_alt, conditions, given, recipe)
    vae_rows = vae.float()
    loss = recipe.kl_weight * kl_to_prior(mu, logvar, vae_rows)
    if recipe.recon_weight > 0:
        loss = loss + recipe.recon_weight * reconstruction_loss(generated, real, mask & ~given, vae_rows)
    if recipe.latent_weight > 0:
        recovered, _ = encoder(compose_fake(real, generated, given), mask)
        prior_rows = (given.any(dim=1) & ~vae).float()
        loss = loss + recipe.latent_weight * latent_regression_loss(recovered, z, prior_rows)
    return GeneratorPass(generated, alternative, z_used, loss)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the objectives for ``precision`` on ``device``: ``auto`` is bf16 on CUDA and
    none (fp32) elsewhere; ``bf16`` forces it (on CPU too: the CUDA numerics, emulated); ``fp32`` turns it off.
    Parameters, gradients, Adam and the EMA are fp32 in every case."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` on ``device`` in ``dtype``; a disabled one when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def discriminator_objective(D: Discriminator, batch: StepInputs, fake: Sequence[torch.Tensor], recipe: Recipe) -> torch.Tensor:
    """The discriminator's loss (0-d fp32): real, fake and mismatched real rows judged in one [3B] batch,
    plus the gradient penalty (wgan-gp) or the R1 penalty (``r1_weight / 2``, any other loss).

    Shared by both steps: the compiled one evaluates it with D's parameters swapped in by
    ``functional_call``, so ``D`` is a real :class:`Discriminator` here too and a new term needs no
    change to the compiled step (the penalties' input gradients are ``torch.autograd.grad``, which it traces).

    Calling mismatched rows fake teaches cross-modal consistency (GAN-CLS's matching-aware discriminator);
    their per-row weights drop rows that could not be mismatched, and with one modality (where none can)
    they are not judged at all. ``fake`` (M tensors [B, dim_m]) is
    treated as data: no gradient flows into the generator.
    """
    b = batch.mask.shape[0]
    if len(batch.real) > 1:
        d_in = [torch.cat([r, f.detach(), w]) for r, f, w in zip(batch.real, fake, batch.mismatched)]
        logits = D(d_in, batch.mask.repeat(3, 1))
        real_logits, fake_logits, mismatch_logits = logits.chunk(3)
        fake_logits = torch.cat([fake_logits, mismatch_logits])
        fake_weight = torch.cat([torch.ones_like(batch.mismatch_weight), batch.mismatch_weight])
    else:
        # One modality: no row can be mismatched (all weights would be 0), so D judges real and fake only;
        # the fake mean keeps its 2B denominator, so the loss equals the three-part one.
        logits = D([torch.cat([batch.real[0], fake[0].detach()])], batch.mask.repeat(2, 1))
        real_logits, fake_logits = logits.chunk(2)
        fake_weight = None
    loss_d = discriminator_loss(recipe.loss, real_logits, fake_logits, fake_weight, fake_rows=2 * b)
    critic = partial(D, mask=batch.mask)
    if recipe.loss == "wgan-gp":
        loss_d = loss_d + recipe.gp_weight * gradient_penalty(critic, batch.real, fake, batch.alpha)
    elif recipe.r1_weight > 0:
        loss_d = loss_d + 0.5 * recipe.r1_weight * r1_penalty(critic, batch.real)
    return loss_d


MMD_ROWS = 256
"""The MMD compares at most this many leading rows of a batch (its cost grows with rows squared);
:func:`~fastmmgan.step_inputs.draw_step_inputs` puts the rows generated from noise first."""


def varied_outputs(specs: Sequence[ModalitySpec]) -> list[bool]:
    """Which outputs the conditional mode-seeking term asks to vary with the noise: all but text. A caption's
    words restate the condition's content in another form; pushing captions of one condition apart changes
    what they say (measured on the digits: image -> text accuracy fell to 16% at weight 1.0 with text in)."""
    return [s.kind != "text" for s in specs]


def generator_objective(
    D: Discriminator, batch: StepInputs, made: GeneratorPass, recipe: Recipe) -> torch.Tensor:
    """The generator's loss (0-d fp32) for what its pass ``made`` (:func:`generator_pass`): its outputs judged by
    ``D`` (given modalities replaced by the real ones first), plus the mode-seeking diversity term, the MMD
    between the rows generated from noise alone and the real batch, with an alternative pass (the same
    conditions from other noise) the conditional mode-seeking term and the conditional energy score, and the
    encoder's terms."""
    generated = made.generated
    fake = compose_fake(batch.real, generated, batch.given)
    loss_g = generator_loss(recipe.loss, D(fake, batch.mask))
    loss_g = loss_g + recipe.diversity_weight * diversity_loss(generated, batch.z, batch.given)
    if made.alternative is not None and recipe.cond_diversity_weight > 0:
        loss_g = loss_g + recipe.cond_diversity_weight * conditional_diversity_loss(
            generated, made.alternative, made.z, batch.z_alt, batch.given, varied_outputs(D.specs))
    if made.alternative is not None and recipe.energy_weight > 0:
        loss_g = loss_g + recipe.energy_weight * conditional_energy_loss(
            generated, made.alternative, batch.real, batch.mask & ~batch.given, energy_rows(batch.given, recipe),
            recipe.energy_spreads(D.specs), one_sided=not recipe.differentiates_both_draws)
    if made.encoder_loss is not None:
        loss_g = loss_g + made.encoder_loss
    if recipe.mmd_weight > 0:
        loss_g = loss_g + recipe.mmd_weight * batch_mmd(generated, batch)
    return loss_g


def energy_rows(given: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """[B] bool: the rows the energy score scores: the conditioned ones (``given`` [B, M] bool), and with
    :attr:`~Recipe.energy_noise_rows` the rows generated from noise alone too."""
    conditioned = given.any(dim=1)
    return torch.ones_like(conditioned) if recipe.energy_noise_rows else conditioned


def batch_mmd(generated: Sequence[torch.Tensor], batch: StepInputs) -> torch.Tensor:
    """:func:`~fastmmgan.losses.mmd_loss` between the rows of ``generated`` generated from noise alone and the real
    rows, over the leading :data:`MMD_ROWS` rows of the global batch (gathered from every process under
    torchrun, so the loss, and after gradient averaging the gradient, equal one process's). Under torchrun
    everything is packed into one tensor first: one gather (and one reduce-scatter back) instead of one per
    tensor, since each collective costs a round trip."""
    rows = slice(0, MMD_ROWS)
    if in_process_group():
        widths = [batch.given.shape[1], *(g.shape[1] for g in generated), *(x.shape[1] for x in batch.real)]
        packed = gather_rows(torch.cat([batch.given.float(), *generated, *batch.real], dim=1))[rows]
        given, *parts = packed.split(widths, dim=1)
        fake, real = parts[: len(generated)], parts[len(generated) :]
        free = (given == 0).all(dim=1).float()
    else:
        free = (~batch.given.any(dim=1)).float()[rows]
        fake = [g[rows] for g in generated]
        real = [x[rows] for x in batch.real]
    return mmd_loss(fake, real, free)


def all_finite(loss: torch.Tensor, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """0-d bool: ``loss`` is finite and so is the sum of every gradient's sum (None skipped).

    A NaN or inf anywhere makes the sum non-finite; so would an fp32 overflow of the sum (|sum| > 3e38),
    which is just as fatal for Adam. One reduction per tensor: a quarter of ``isfinite().all()``'s work
    in eager mode.
    """
    sums = [g.sum(dtype=torch.float32) for g in grads if g is not None]
    return torch.isfinite(loss) & torch.isfinite(torch.stack(sums).sum())


class ReferenceStep:
    """The plain eager step: autograd + torch.optim.Adam, the behaviour every faster step is checked against.

    The generator runs once; the discriminator judges real, fake and mismatched real samples in one batch;
    the generator update takes its gradient through the just-updated discriminator without accumulating
    D weight gradients. NaN guard: an update whose loss or any gradient is non-finite is skipped (no
    optimizer step; a skipped generator update also skips the EMA); deciding costs a host sync per update,
    free on CPU. Returns 0-d ``loss_d``, ``loss_g`` and ``skipped`` (1.0 when either update was skipped).
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        ema: Generator,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        recipe: Recipe = Recipe(),
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.G, self.D, self.ema = generator, discriminator, ema
        self.opt_g, self.opt_d = opt_g, opt_d
        self.recipe = recipe
        self.amp_dtype = amp_dtype
        self.device = next(generator.parameters()).device

    def __call__(self, batch: StepInputs) -> dict[str, torch.Tensor]:
        with autocast(self.device, self.amp_dtype):
            made = generator_pass(self.G, batch.z, batch.z_alt, batch.real, batch.mask, batch.given, self.recipe,
                                  batch.conditions)
        fake = compose_fake(batch.real, made.generated, batch.given)

        with autocast(self.device, self.amp_dtype):
            loss_d = discriminator_objective(self.D, batch, fake, self.recipe).float()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        ok_d = bool(all_finite(loss_d, [p.grad for p in self.D.parameters()]))
        if ok_d:
            self.opt_d.step()

        self.D.requires_grad_(False)
        judge = getattr(self.D, "module", self.D)
        with autocast(self.device, self.amp_dtype):
            loss_g = generator_objective(judge, batch, made, self.recipe).float()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.D.requires_grad_(True)
        ok_g = bool(all_finite(loss_g, [p.grad for p in self.G.parameters()]))
        if ok_g:
            self.opt_g.step()
            with torch.no_grad():
                ema_params = list(self.ema.parameters())
                weight = 1.0 - batch.ema_beta.to(ema_params[0].dtype)
                torch._foreach_lerp_(ema_params, list(self.G.parameters()), weight)
        skipped = torch.tensor(float(not (ok_d and ok_g)))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "skipped": skipped}


WARM_CALLS = 2
"""Calls of the compiled step with dynamo's guards (the first compiles, the second is CUDA graphs'
recording) before calls with the same batch signature skip them."""


def _default_stance() -> bool:
    """Whether torch.compile runs in its default stance (a user's ``set_stance("force_eager")`` or the like
    must not be overridden by the guard skipping)."""
    stance = getattr(getattr(torch._dynamo, "eval_frame", None), "_stance", None)
    return getattr(stance, "stance", "default") == "default" and not getattr(stance, "skip_guard_eval_unsafe", False)


class _Bound(nn.Module):
    """``objective(module, *args)`` as a module, so ``functional_call`` can swap the module's parameters
    for the call: the objective sees a real module (its layers, weights) holding the given tensors."""

    def __init__(self, module: nn.Module, objective) -> None:
        super().__init__()
        self.module = module
        self.objective = objective

    def forward(self, *args, **kwargs):
        return self.objective(self.module, *args, **kwargs)


class CompiledStep:
    """The whole training step (D update, G update, EMA) as one ``torch.compile(fullgraph=True)`` graph.

    Inside the graph, gradients come from standard autograd (``torch.autograd.grad``, traced by dynamo
    with ``trace_autograd_ops``), so AOTAutograd differentiates the fused ops through their registered
    backward, which is what puts the Triton kernels, forward and backward, inside the compiled step on
    CUDA. (torch.func transforms cannot: they reject ops whose autograd is registered through
    ``torch.library``, and under dynamo they would differentiate the op's forward as if it had no backward.)

    - the generator runs once; its outputs are detached for the D update, so no gradient reaches G there;
    - ``autograd.grad`` of :func:`discriminator_objective` w.r.t. D's parameters only (real, fake and
      mismatched rows in one batch; no input gradients for data); the penalties' input gradients are
      ``autograd.grad(create_graph=True)``, the ops' double backward;
    - Adam (:func:`adam_update`, the fused kernel's math) on D; the NaN guard is a finite flag and
      ``torch.where``, so a bad update changes nothing and never breaks the graph;
    - ``autograd.grad`` of :func:`generator_objective`, through the updated D (swapped in by
      ``functional_call``: no D weight gradients are formed), w.r.t. G's parameters; Adam on G and the EMA
      lerp (weight ``1 - beta`` from a 0-d tensor, 0 when the G update was skipped);
    - the new parameters, the optimizer state and the EMA are written in place at the end of the graph.

    Shapes are static (``dynamic=False``; the trainer drops the ragged last batch); lr is passed as a
    one-element tensor and the EMA decay comes in the batch, so nothing recompiles across steps. The optimizer
    state stays in ``opt_g.state`` / ``opt_d.state`` in torch.optim.Adam's own layout.

    Precision: the objectives run under autocast in ``amp_dtype`` (bf16 on CUDA by default, see
    :func:`autocast_dtype`), so every GEMM is 16-bit (the Triton ops cast their arguments under autocast as
    ``F.linear`` does); the losses cast logits to fp32, and parameters, gradients, Adam and the EMA stay fp32.

    On CUDA with inductor, ``mode="reduce-overhead"`` captures CUDA graphs; the first call compiles and runs
    uncaptured (the cudagraph-trees warm-up), so the Triton ops autotune before any capture, and the kernels'
    first-use self-check (:mod:`fastmmgan.selfcheck`) runs before tracing; persistent tensors are marked
    static (:meth:`graph_inputs`), and the returned losses are cloned out of the graph's pool.
    ``backend="aot_eager"`` runs the same AOTAutograd graphs op by op without codegen: with
    ``FASTMMGAN_KERNELS=triton`` and ``TRITON_INTERPRET=1`` that is the CUDA step's exact op sequence,
    Triton kernels included, on CPU tensors.

    On CPU, inductor's C++ wrapper (``cpp_wrapper``) calls the kernels and GEMMs of the graph without
    Python in between (measured 3-5% per step at batch 64).

    Guards: after :data:`WARM_CALLS` calls, a batch with the same shapes, dtypes, devices and dispatch mode
    as those calls runs the compiled graph without dynamo's guard evaluation (measured 2.60 -> 2.27 ms
    per step, seed-mnist at batch 64 on 2 CPU cores); anything else goes through the guards (and
    recompiles if it must).

    Under torchrun the gradients are averaged over the processes inside the graph (:func:`average_grads`, one
    traced all-reduce per update; the MMD's rows are gathered the same way), so N processes with the same
    global batch follow one process's trajectory. Inductor's C++ wrapper and CUDA graphs are off there: the
    C++ wrapper cannot call the collectives, and CUDA-graph capture of them is untested.

    Dynamo caches compiled code per code object, so every instance adds one entry to :meth:`_step`'s
    cache (guarded on the instance): a process that builds more than 8 instances (dynamo's recompile
    limit) should ``torch._dynamo.reset()`` between them, as ``python -m fastmmgan.bench`` does.

    ``compile_seconds`` holds the wall time of the first call (trace, compile, run) once it has returned.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        ema: Generator,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        recipe: Recipe = Recipe(),
        device: torch.device | None = None,
        backend: str | Callable = "inductor",
        options: dict | None = None,
        amp_dtype: torch.dtype | None | str = "auto",
    ) -> None:
        self.G, self.D, self.ema = generator, discriminator, ema
        self.opt_g, self.opt_d = opt_g, opt_d
        self.hyper_g, self.hyper_d = adam_hyper(opt_g), adam_hyper(opt_d)
        for opt, model in ((opt_g, generator), (opt_d, discriminator)):
            if [id(p) for p in opt.param_groups[0]["params"]] != [id(p) for p in model.parameters()]:
                raise ValueError("each optimizer must hold exactly its model's parameters, in order")
        if isinstance(backend, str) and backend not in COMPILE_BACKENDS:
            raise ValueError(f"compile backend must be one of {', '.join(COMPILE_BACKENDS)}, got {backend!r}")
        self.recipe = recipe
        self.d_objective = _Bound(discriminator, partial(discriminator_objective, recipe=recipe))
        self.g_objective = _Bound(discriminator, partial(generator_objective, recipe=recipe))
        self.g_names = ["module." + n for n, _ in generator.named_parameters()]
        self.d_names = ["module." + n for n, _ in discriminator.named_parameters()]
        self._generate = _Bound(generator, partial(generator_pass, recipe=recipe))
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.amp_dtype = autocast_dtype("auto", self.device) if amp_dtype == "auto" else amp_dtype
        self.compile_seconds: float | None = None
        self._lr_cache: dict[int, tuple[float, torch.Tensor]] = {}
        self._warm_signature: tuple | None = None
        self._warm_calls = 0
        compute_dtype = self.amp_dtype or torch.float32
        if self.cuda and kernels_mode_now() == "auto" and (compute_dtype != torch.float32 or tf32_allowed()):
            # Before tracing: inside the trace the kernels cannot run, and dispatch reads the result.
            from . import selfcheck

            selfcheck.ensure(self.device, [compute_dtype])
        mode = None
        if backend == "inductor" and options is None and not in_process_group():
            mode, options = ("reduce-overhead", None) if self.cuda else (None, {"cpp_wrapper": True})
        self._compiled = torch.compile(
            self._step, fullgraph=True, dynamic=False, backend=backend, mode=mode, options=options
        )

    def _lr(self, opt: torch.optim.Optimizer) -> torch.Tensor:
        """The group's current lr as a cached float64 [1] tensor on the device (refreshed when it changes).

        Not 0-d: dynamo treats a 0-d float64 CPU input as a Python float, specialises on its value (a
        recompile per lr change) and restarts its analysis (twice the trace time).
        """
        value = float(opt.param_groups[0]["lr"])
        cached = self._lr_cache.get(id(opt))
        if cached is None or cached[0] != value:
            cached = (value, torch.full((1,), value, dtype=torch.float64, device=self.device))
            self._lr_cache[id(opt)] = cached
        return cached[1]

    @torch.no_grad()
    def __call__(self, batch: StepInputs) -> dict[str, torch.Tensor]:
        first = self.compile_seconds is None
        start = time.perf_counter()
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        inputs = self.graph_inputs(batch)
        signature = self._signature(batch)
        if signature == self._warm_signature and self._warm_calls >= WARM_CALLS and _default_stance():
            # Same shapes and dispatch as the calls that compiled and ran the graph: dynamo's guards (a few
            # hundred checks on ~80 tensors, 0.3 ms a step on a 2-core CPU) can only agree, so skip them.
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                out, _ = self._compiled(*inputs)
        else:
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                out, _ = self._compiled(*inputs)
            same = signature == self._warm_signature
            self._warm_signature, self._warm_calls = signature, self._warm_calls + 1 if same else 1
        if self.cuda:
            out = {k: v.clone() for k, v in out.items()}
        if first:
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled the training step in %.1f s", self.compile_seconds)
        return out

    @staticmethod
    def _signature(batch: StepInputs) -> tuple:
        """What a new batch could change that the compiled graph depends on: each tensor's shape, dtype
        and device, the ops' dispatch mode, and whether the conditions are the real tensors themselves (the
        graph takes one input for both then). Parameters and optimizer state keep theirs between steps."""
        tensors = [*batch.real, batch.mask, batch.given, *batch.mismatched, batch.mismatch_weight, batch.z,
                   batch.z_alt, batch.alpha, batch.ema_beta, *batch.conditions]
        aliased = tuple(c is r for c, r in zip(batch.conditions, batch.real, strict=True))
        return (kernels_mode_now(), *((t.shape, t.dtype, t.device) for t in tensors), aliased)

    def graph_inputs(self, batch: StepInputs) -> tuple:
        """The arguments of the compiled graph (:meth:`_step`) for ``batch``: the batch's tensors, the EMA,
        both optimizers' (params, exp_avg, exp_avg_sq, step) and their lrs. On CUDA the persistent ones
        are marked static, so CUDA graphs update them in place instead of copying them in."""
        ema, state_g, state_d = list(self.ema.parameters()), adam_state(self.opt_g), adam_state(self.opt_d)
        if self.cuda:
            for t in itertools.chain(ema, *state_g, *state_d):
                torch._dynamo.mark_static_address(t)
        return (
            batch.real, batch.mask, batch.given, batch.mismatched, batch.mismatch_weight, batch.z, batch.z_alt,
            batch.alpha, batch.ema_beta, batch.conditions, ema, state_g, state_d, self._lr(self.opt_g),
            self._lr(self.opt_d),
        )

    def explain(self, batch: StepInputs):
        """``torch._dynamo.explain`` of the step's graph for ``batch`` (graph count, breaks and why)."""
        with torch._dynamo.config.patch(trace_autograd_ops=True), torch.no_grad():
            return torch._dynamo.explain(self._step)(*self.graph_inputs(batch))

    def _step(
        self,
        real: Tensors,
        mask: torch.Tensor,
        given: torch.Tensor,
        mismatched: Tensors,
        mismatch_weight: torch.Tensor,
        z: torch.Tensor,
        z_alt: torch.Tensor,
        alpha: torch.Tensor,
        ema_beta: torch.Tensor,
        conditions: Tensors,
        ema_params: Tensors,
        state_g: tuple[Tensors, Tensors, Tensors, Tensors],
        state_d: tuple[Tensors, Tensors, Tensors, Tensors],
        lr_g: torch.Tensor,
        lr_d: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        batch = StepInputs(real, mask, given, mismatched, mismatch_weight, z, z_alt, alpha, ema_beta, conditions)
        g_params, *g_opt = state_g
        d_params, *d_opt = state_d

        amp = partial(autocast, self.device, self.amp_dtype)
        with torch.enable_grad():
            with amp():
                made = functional_call(self._generate, dict(zip(self.g_names, g_params)), (z, z_alt, real, mask, given),
                                       {"conditions": conditions})
            fake = [f.detach() for f in compose_fake(real, made.generated, given)]
            with amp():
                loss_d = functional_call(self.d_objective, dict(zip(self.d_names, d_params)), (batch, fake)).float()
            d_grads = average_grads(torch.autograd.grad(loss_d, d_params))
        ok_d = all_finite(loss_d, d_grads)
        d_new, d_scalars = adam_update(d_params, d_grads, *d_opt, lr_d, self.hyper_d, ok_d)

        with torch.enable_grad():
            with amp():
                loss_g = functional_call(self.g_objective, dict(zip(self.d_names, d_new)), (batch, made)).float()
            g_grads = average_grads(torch.autograd.grad(loss_g, g_params))
        ok_g = all_finite(loss_g, g_grads)
        g_new, g_scalars = adam_update(g_params, g_grads, *g_opt, lr_g, self.hyper_g, ok_g)

        ema_weight = torch.where(ok_g, 1.0 - ema_beta, 0.0).to(ema_params[0].dtype)
        for e, p in zip(ema_params, g_new, strict=True):
            e.copy_(torch.lerp(e, p, ema_weight))
        for p, new in zip(d_params + g_params, d_new + g_new, strict=True):
            p.copy_(new)
        skipped = (~(ok_d & ok_g)).float()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "skipped": skipped}, (d_scalars, g_scalars)


def build_step(
    generator: Generator,
    discriminator: Discriminator,
    ema: Generator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    cfg: TrainConfig,
    device: torch.device,
) -> ReferenceStep | CompiledStep:
    """The step a run uses: :class:`CompiledStep` when ``cfg.compile``, else :class:`ReferenceStep`.

    What the compiled step cannot do (an Adam option it does not implement) falls back to the reference
    step with one warning saying why.
    """
    args = (generator, discriminator, ema, opt_g, opt_d, Recipe.from_config(cfg))
    amp_dtype = autocast_dtype(cfg.precision, device)
    if cfg.compile:
        try:
            return CompiledStep(*args, device=device, backend=cfg.compile_backend, amp_dtype=amp_dtype)
        except ValueError as e:
            log.warning("using the eager reference step: %s", e)
    return ReferenceStep(*args, amp_dtype=amp_dtype)
