"""The multimodal GAN: fusion into one shared space, leaky-ReLU dense stacks, one head per modality.

Every layer calls :mod:`fastmmgan.ops`, so the same state dict runs on the Triton kernels (CUDA)
or the reference math (CPU, export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops
from .modalities import ModalitySpec


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

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        return ops.shared_projection(list(xs), [p.weight for p in self.proj], self.bias, mask, self.slope)


class DenseStack(nn.Sequential):
    """A leaky-ReLU MLP of ``depth`` FusedDense layers of one width. [B, width] -> [B, width]."""

    def __init__(self, width: int, depth: int, slope: float = ops.DEFAULT_SLOPE) -> None:
        super().__init__(*(FusedDense(width, width, slope) for _ in range(depth)))


class Generator(nn.Module):
    """Noise plus any subset of given modalities -> every modality's features in [0, 1].

    The noise z [B, z_dim] is fused with the given modalities as one more, always-present input of the
    shared projection; ``given`` [B, M] (bool) says which modalities are conditions. Heads are one GEMM
    over all modalities, split per modality, each through a sigmoid.
    """

    def __init__(self, specs: Sequence[ModalitySpec], z_dim: int = 64, width: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.specs = tuple(specs)
        self.z_dim = z_dim
        self.fusion = SharedProjection([z_dim, *(s.dim for s in self.specs)], width)
        self.body = DenseStack(width, depth)
        self.head = nn.Linear(width, sum(s.dim for s in self.specs))

    def forward(self, z: torch.Tensor, xs: Sequence[torch.Tensor], given: torch.Tensor) -> list[torch.Tensor]:
        """z [B, z_dim]; xs: M feature tensors [B, dim_m] (ignored where not given); given [B, M] -> M tensors."""
        mask = torch.cat([torch.ones_like(given[:, :1]), given], dim=1)
        h = self.body(self.fusion([z, *xs], mask))
        out = torch.sigmoid(self.head(h))
        return list(out.split([s.dim for s in self.specs], dim=1))


class Discriminator(nn.Module):
    """All present modalities -> one realness logit [B, 1]; ``mask`` [B, M] marks which are present."""

    def __init__(self, specs: Sequence[ModalitySpec], width: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.specs = tuple(specs)
        self.fusion = SharedProjection([s.dim for s in self.specs], width)
        self.body = DenseStack(width, depth)
        self.head = nn.Linear(width, 1)

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.fusion(xs, mask)))


def compose_fake(real: Sequence[torch.Tensor], generated: Sequence[torch.Tensor], given: torch.Tensor) -> list[torch.Tensor]:
    """What the discriminator judges as fake: given modalities stay real, the rest are generated."""
    return [torch.where(given[:, m : m + 1], x, g) for m, (x, g) in enumerate(zip(real, generated))]
