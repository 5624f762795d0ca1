"""The multimodal GAN: fusion into one shared space, leaky-ReLU dense stacks, one head per modality.

Every layer calls :mod:`fastmmgan.ops`, so the same state dict runs on the Triton kernels (CUDA)
or the reference math (CPU, export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops
from .attention_fusion import AttentionFusion
from .config import FUSIONS, TrainConfig
from .modalities import ModalitySpec


def he_init_(module: nn.Module, slope: float = ops.DEFAULT_SLOPE) -> None:
    """He-normal weights for leaky-ReLU, zero biases, in every linear layer of ``module``.

    Variance-preserving init keeps the noise's influence alive through the stack; torch's default
    Linear init shrinks activations ~3x per layer, and the generator then starts (and stays) collapsed.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, a=slope, nonlinearity="leaky_relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class FusedDense(nn.Linear):
    """``lrelu(x @ W.T + b)``: an ``nn.Linear`` (same state dict) whose forward is the fused op. [B,K] -> [B,N]."""

    def __init__(self, in_features: int, out_features: int, slope: float = ops.DEFAULT_SLOPE) -> None:
        super().__init__(in_features, out_features)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.fused_dense(x, self.weight, self.bias, self.slope)


class SharedProjection(nn.Module):
    """Projects each modality into one shared space and fuses them: masked mean + bias + leaky-ReLU.

    Inputs: M tensors [B, K_m] and a mask [B, M] (None = all present). Output [B, N].
    """

    def __init__(self, in_dims: Sequence[int], out_features: int, slope: float = ops.DEFAULT_SLOPE) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(k, out_features, bias=False) for k in in_dims)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.slope = slope

    @torch.no_grad()
    def calibrate_(self, xs: Sequence[torch.Tensor]) -> None:
        """Rescale each modality's projection to unit std on sample data xs (M tensors [B, K_m]).

        Modalities differ wildly in size and sparsity (a 25-word bag of words vs a 576-bin spectrogram);
        without this the dense ones drown the sparse ones in the mean and their conditioning is ignored.
        """
        for proj, x in zip(self.proj, xs):
            std = proj(x.to(proj.weight.dtype)).std(dim=0).mean()
            if torch.isfinite(std) and std > 0:
                proj.weight.div_(std)

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        return ops.shared_projection(list(xs), [p.weight for p in self.proj], self.bias, mask, self.slope)


def make_fusion(kind: str, in_dims: Sequence[int], out_features: int) -> SharedProjection | AttentionFusion:
    """The fusion of M inputs [B, K_m] (and a mask [B, M]) into the shared space [B, out_features]: ``projection``
    (:class:`SharedProjection`, a masked mean of per-modality projections) or ``attention``
    (:class:`~fastmmgan.attention_fusion.AttentionFusion`, masked self-attention over modality tokens)."""
    if kind == "projection":
        return SharedProjection(in_dims, out_features)
    if kind == "attention":
        return AttentionFusion(in_dims, out_features)
    raise ValueError(f"unknown fusion {kind!r} (expected one of {', '.join(FUSIONS)})")


class DenseStack(nn.Sequential):
    """A leaky-ReLU MLP of FusedDense layers ``widths[0] -> widths[1] -> ... -> widths[-1]``.
    [B, widths[0]] -> [B, widths[-1]]; one width gives no layer (identity)."""

    def __init__(self, widths: Sequence[int], slope: float = ops.DEFAULT_SLOPE) -> None:
        super().__init__(*(FusedDense(a, b, slope) for a, b in zip(widths, widths[1:])))


def stack_widths(width: int, depth: int, widths: Sequence[int] | None) -> tuple[int, ...]:
    """The fusion's width then each dense layer's: ``widths`` when given, else ``depth`` layers of ``width``."""
    out = tuple(widths) if widths else (width,) * (depth + 1)
    if len(out) < 2 or any(w <= 0 for w in out):
        raise ValueError(f"widths need the fusion's width and at least one layer's, all positive; got {list(out)}")
    return out


class Generator(nn.Module):
    """Noise plus any subset of given modalities -> every modality's features in [0, 1].

    The noise z [B, z_dim] (standard normal) is fused with the given modalities as one more, always-present
    input of the shared projection; ``given`` [B, M] (bool) says which modalities are conditions. Heads are
    one GEMM over all modalities, split per modality, each through a sigmoid.

    With ``components`` K > 0 the noise is a mixture: the argmax of z's first K entries picks one of K
    equally likely components, fed as a one-hot next to z (see :meth:`noise_features`). Data made of
    separate clusters (ten digits, each with its caption and tone) then need no continuous path between
    clusters through z, where a continuous latent drops whole clusters or makes in-between samples.

    Widths: ``widths`` = (fusion width, then each dense layer's), e.g. (128, 256) for the seeds' MNIST
    generator 100-128-256-784; without it, ``depth`` layers of ``width``. ``encoder_widths`` adds an
    :class:`Encoder` (``self.encoder``) that maps real samples to the noise that makes them. With one
    modality there is nothing to condition on (generating the only modality from itself), so the fusion takes the noise
    alone: no projection of data that would always be masked out.
    """

    def __init__(
        self, specs: Sequence[ModalitySpec], z_dim: int = 64, width: int = 256, depth: int = 2, components: int = 0,
        widths: Sequence[int] | None = None, encoder_widths: Sequence[int] | None = None,
        conditioned_components: bool = True, fusion: str = "projection",
    ) -> None:
        super().__init__()
        if not 0 <= components <= z_dim:
            raise ValueError(f"components must be in [0, z_dim={z_dim}], got {components}")
        self.specs = tuple(specs)
        self.z_dim = z_dim
        self.components = components
        self.conditioned_components = conditioned_components
        self.conditional = len(self.specs) > 1
        self.widths = stack_widths(width, depth, widths)
        data_dims = [s.dim for s in self.specs] if self.conditional else []
        self.fusion = make_fusion(fusion, [z_dim + components, *data_dims], self.widths[0])
        self.body = DenseStack(self.widths)
        self.head = nn.Linear(self.widths[-1], sum(s.dim for s in self.specs))
        # The encoder is part of the generator (same optimizer, EMA, checkpoint and step): it is trained only
        # through the generator's objective. One modality has no condition to reconstruct from, so no encoder.
        self.encoder = Encoder(self.specs, z_dim, encoder_widths, fusion) if encoder_widths and self.conditional else None
        he_init_(self)
        if self.encoder is not None:
            self.encoder.reset_head_()
        self._register_load_state_dict_pre_hook(self._drop_unconditional_projections)

    @classmethod
    def from_config(cls, specs: Sequence[ModalitySpec], cfg: TrainConfig) -> Generator:
        encoder = (cfg.e_width,) * (cfg.e_depth + 1) if cfg.uses_encoder else None
        return cls(specs, cfg.z_dim, cfg.g_width, cfg.g_depth, cfg.z_components, cfg.g_widths, encoder,
                   cfg.conditioned_components, cfg.fusion)

    def _drop_unconditional_projections(self, state_dict, prefix, *args) -> None:
        """Checkpoints of one-modality generators from before they were unconditional hold a projection of
        the data that was always masked out (it never changed an output): drop it on load."""
        if self.conditional:
            return
        stale = prefix + "fusion.proj."
        for key in [k for k in state_dict if k.startswith(stale) and not k.startswith(stale + "0.")]:
            del state_dict[key]

    def noise_features(self, z: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, z_dim] -> [B, z_dim + components]: z, then the one-hot of the argmax of its first
        ``components`` entries, scaled by sqrt(z_dim) so the choice weighs as much as z (same norm).

        Without ``conditioned_components``, rows given a modality (``given`` [B, M] bool) get no one-hot (zeros):
        there the condition picks the cluster, and a component that names another one is noise the generator
        must learn to ignore, and with it the rest of z (one output per condition)."""
        if not self.components:
            return z
        head = z[:, : self.components]
        onehot = (head == head.amax(dim=1, keepdim=True)).to(z.dtype)
        if given is not None and not self.conditioned_components:
            onehot = onehot * (~given.any(dim=1, keepdim=True)).to(z.dtype)
        return torch.cat([z, onehot * self.z_dim**0.5], dim=1)

    def forward(self, z: torch.Tensor, xs: Sequence[torch.Tensor], given: torch.Tensor) -> list[torch.Tensor]:
        """z [B, z_dim]; xs: M feature tensors [B, dim_m] (ignored where not given); given [B, M] -> M tensors."""
        if self.conditional:
            mask = torch.cat([torch.ones_like(given[:, :1]), given], dim=1)
            h = self.body(self.fusion([self.noise_features(z, given), *xs], mask))
        else:
            h = self.body(self.fusion([self.noise_features(z)], None))
        out = torch.sigmoid(self.head(h))
        return list(out.split([s.dim for s in self.specs], dim=1))


class Encoder(nn.Module):
    """The seeds' VAE encoder: every present modality -> the posterior of the generator's noise.

    ``forward(xs, mask)``: M tensors [B, dim_m] and the presence mask [B, M] -> (mu, logvar), each [B, z_dim]
    fp32. The same shared projection and leaky-ReLU dense stack as the generator and discriminator,
    ``widths`` = (fusion width, then each dense layer's), then one linear layer to mean and log-variance.
    Trained inside the generator's objective: a sample encoded and decoded under its own conditions must
    come back (cVAE-GAN), and noise must be recoverable from what it generated (latent regression), so
    different noise makes different samples of the same condition.
    """

    LOGVAR_RANGE = (-10.0, 4.0)
    """logvar is clamped here: exp(logvar / 2) must neither underflow to a noiseless code nor overflow."""

    def __init__(
        self, specs: Sequence[ModalitySpec], z_dim: int, widths: Sequence[int], fusion: str = "projection"
    ) -> None:
        super().__init__()
        self.widths = stack_widths(widths[0], len(widths) - 1, widths)
        self.z_dim = z_dim
        self.fusion = make_fusion(fusion, [s.dim for s in specs], self.widths[0])
        self.body = DenseStack(self.widths)
        self.head = nn.Linear(self.widths[-1], 2 * z_dim)
        he_init_(self)
        self.reset_head_()

    @torch.no_grad()
    def reset_head_(self) -> None:
        """Small head weights: the encoder starts near the prior (mu 0, logvar 0) instead of at random codes."""
        nn.init.normal_(self.head.weight, std=0.01 / self.widths[-1] ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(self.fusion(xs, mask))).float()
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar.clamp(*self.LOGVAR_RANGE)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Append one feature: the std across each group of ``group`` consecutive rows, averaged over features.

    [B, W] -> [B, W + 1]. It lets the discriminator see a batch's diversity, so a generator that
    collapses to one sample is caught (ProGAN's minibatch standard deviation). Groups fall back to
    single rows (std 0) when B is not a multiple of ``group``.
    """
    b, w = h.shape
    g = group if b % group == 0 else 1
    var = h.reshape(b // g, g, w).var(dim=1, unbiased=False)
    std = (var + 1e-8).sqrt().mean(dim=1)
    return torch.cat([h, std.repeat_interleave(g)[:, None]], dim=1)


class Discriminator(nn.Module):
    """All present modalities -> one realness logit [B, 1]; ``mask`` [B, M] marks which are present.

    Real and fake rows must come in separate groups of ``mbstd_group`` consecutive rows (the training
    step concatenates whole batches), since the minibatch-stddev feature is taken per group;
    ``mbstd_group=0`` leaves the feature out (the seeds' plain MLP discriminator). ``widths`` as for
    :class:`Generator`: (256, 128) is the seeds' 784-256-128-1.
    """

    def __init__(
        self, specs: Sequence[ModalitySpec], width: int = 256, depth: int = 2, mbstd_group: int = 4,
        widths: Sequence[int] | None = None, fusion: str = "projection",
    ) -> None:
        super().__init__()
        if mbstd_group < 0:
            raise ValueError(f"mbstd_group must be >= 0, got {mbstd_group}")
        self.specs = tuple(specs)
        self.mbstd_group = mbstd_group
        self.widths = stack_widths(width, depth, widths)
        first, *rest = self.widths
        self.fusion = make_fusion(fusion, [s.dim for s in self.specs], first)
        extra = 1 if mbstd_group else 0
        self.body = nn.Sequential(FusedDense(first + extra, rest[0]), DenseStack(rest))
        self.head = nn.Linear(rest[-1], 1)
        he_init_(self)

    @classmethod
    def from_config(cls, specs: Sequence[ModalitySpec], cfg: TrainConfig) -> Discriminator:
        return cls(specs, cfg.d_width, cfg.d_depth, cfg.mbstd_group, cfg.d_widths, cfg.fusion)

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        h = self.fusion(xs, mask)
        if self.mbstd_group:
            h = minibatch_stddev(h, self.mbstd_group)
        return self.head(self.body(h))


def compose_fake(real: Sequence[torch.Tensor], generated: Sequence[torch.Tensor], given: torch.Tensor) -> list[torch.Tensor]:
    """What the discriminator judges as fake: given modalities stay real, the rest are generated."""
    return [torch.where(given[:, m : m + 1], x, g) for m, (x, g) in enumerate(zip(real, generated))]


def calibrate_fusions_(
    generator: Generator, discriminator: Discriminator, features: Sequence[torch.Tensor], seed: int
) -> None:
    """Data-dependent init of both fusions (see :meth:`SharedProjection.calibrate_`) on up to 512 samples
    of ``features`` (M tensors [N, dim_m]) chosen by ``seed``, with noise from the same seed."""
    device = next(generator.parameters()).device
    idx = torch.randperm(len(features[0]), generator=torch.Generator().manual_seed(seed))[:512]
    xs = [x[idx].to(device) for x in features]
    z = torch.randn(len(idx), generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    generator.fusion.calibrate_([generator.noise_features(z), *xs])
    discriminator.fusion.calibrate_(xs)
    if generator.encoder is not None:
        generator.encoder.fusion.calibrate_(xs)
