"""Attention fusion: the modalities as tokens, one masked self-attention layer, a per-token MLP, a masked mean.

A drop-in alternative to :class:`fastmmgan.models.SharedProjection` (same constructor, ``calibrate_`` and
``forward``, same output range): where the shared projection averages independent per-modality projections,
here every present modality's token first attends to the other present ones, so the fused vector can
depend on how the modalities relate (a caption that matches its image), not only on each one alone.

Every op goes through :mod:`fastmmgan.ops` (``masked_attention``, ``fused_dense``), so the same state dict
runs on the Triton kernels or on the reference math; through the reference it exports to ONNX with standard
ops only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import ATTENTION_HEADS


class AttentionFusion(nn.Module):
    """Fuses M modalities into one [B, N] vector with masked multi-head self-attention over modality tokens.

    Inputs: M tensors [B, K_m] and a mask [B, M] bool (True = present; None = all present). Output [B, N]
    (N = ``out_features``), in the inputs' dtype (the autocast dtype under autocast). Per row:

    1. token_m = W_m x_m + b_m [N] for each modality (own ``nn.Linear``; its bias is the modality's learned
       embedding, so a token also says which modality it is); absent modalities' tokens are set to 0;
    2. t = token + Wo · attention(Wqkv · token + (b_q, 0, b_v)) (``heads`` heads of N / heads dims; absent tokens are
       neither attended to nor attend);
    3. t = t + W2 · lrelu(W1 · t + b1) on each token (W1 through ``ops.fused_dense``);
    4. y = lrelu(masked mean of t over the present tokens + bias).

    A row with no present modality gives y = lrelu(bias), finite, with finite (zero except for ``bias``)
    gradients, as :class:`~fastmmgan.models.SharedProjection` gives.
    """

    def __init__(
        self, in_dims: Sequence[int], out_features: int, slope: float = ops.DEFAULT_SLOPE, heads: int = ATTENTION_HEADS
    ) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("AttentionFusion needs at least one modality")
        if heads < 1 or out_features % heads:
            raise ValueError(f"out_features ({out_features}) must be a positive multiple of heads ({heads})")
        n = out_features
        self.proj = nn.ModuleList(nn.Linear(k, n, bias=True) for k in in_dims)
        # No key bias: it adds q . b_k to every score of a row, which the softmax cancels, so its gradient is
        # exactly 0 and Adam would turn the rounding noise of that 0 into full-size updates.
        self.qkv = nn.Linear(n, 3 * n, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(n))
        self.v_bias = nn.Parameter(torch.zeros(n))
        self.attn_out = nn.Linear(n, n)
        self.mlp_in = nn.Linear(n, n)
        self.mlp_out = nn.Linear(n, n)
        self.bias = nn.Parameter(torch.zeros(n))
        self.heads = heads
        self.slope = slope

    @torch.no_grad()
    def calibrate_(self, xs: Sequence[torch.Tensor]) -> None:
        """Rescale each modality's token projection to unit std on sample data xs (M tensors [B, K_m]).

        As in :meth:`SharedProjection.calibrate_`: modalities differ wildly in size and sparsity (a 25-word
        bag of words vs a 576-bin spectrogram), and without this the dense ones drown the sparse ones. Here it
        also keeps the attention scores q.k / sqrt(D) in the range the init expects, so the softmax starts
        neither saturated nor flat. Only the weight is scaled: the bias (the modality's embedding) does
        not move the std.
        """
        for proj, x in zip(self.proj, xs):
            std = F.linear(x.to(proj.weight.dtype), proj.weight).std(dim=0).mean()
            if torch.isfinite(std) and std > 0:
                proj.weight.div_(std)

    def forward(self, xs: Sequence[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """xs: M tensors [B, K_m]; mask [B, M] bool or None (all present) -> [B, out_features]."""
        if len(xs) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} modalities, got {len(xs)}")
        batch, num_mod, n = xs[0].shape[0], len(xs), self.bias.shape[0]
        heads, head_dim = self.heads, n // self.heads
        if mask is None:
            present = torch.ones(batch, num_mod, dtype=torch.bool, device=xs[0].device)
        else:
            present = ops.present_tokens(mask)
        tokens = torch.stack([proj(x) for proj, x in zip(self.proj, xs)], dim=1)  # [B, M, N]
        # Absent modalities' tokens become 0: attention already ignores them and the mean weighs them 0, but
        # this keeps whatever an absent input holds (stale values, even inf or NaN) out of the forward, where
        # 0 * inf in the mean would be NaN. (Gradients still need finite inputs: dW sums 0 * x.)
        tokens = torch.where(present[:, :, None], tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))

        # Self-attention with a residual: [B, M, 3N] -> q, k, v [B, H, M, D] (views, no copies).
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(tokens, self.qkv.weight, qkv_bias).view(batch, num_mod, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = ops.masked_attention(qkv[0], qkv[1], qkv[2], present)  # [B, H, M, D]
        attended = attended.transpose(1, 2).reshape(batch, num_mod, n)
        t = tokens + self.attn_out(attended)

        # Per-token leaky-ReLU MLP with a residual, the tokens as B*M rows of the fused dense op.
        hidden = ops.fused_dense(t.reshape(batch * num_mod, n), self.mlp_in.weight, self.mlp_in.bias, self.slope)
        t = t + self.mlp_out(hidden).view(batch, num_mod, n)

        # Masked mean over present tokens (weights mask / max(1, count): a row with none gives 0), then the
        # same bias + leaky-ReLU as SharedProjection, so the output range matches.
        weights = ops.presence_weights(present, t.dtype)  # [B, M]
        fused = (t * weights[:, :, None]).sum(dim=1)
        return F.leaky_relu(fused + self.bias.to(fused.dtype), self.slope)
