"""Fused Triton kernels of fastmmgan, registered as ``torch.ops.fastmmgan.*`` so torch.compile sees them.

Importing this package imports triton and registers the ops; :mod:`fastmmgan.ops` imports it only
when it dispatches to the kernels.
"""

from .fused_dense import fused_dense_triton
from .masked_attention import masked_attention_triton
from .shared_projection import shared_projection_triton

__all__ = ["fused_dense_triton", "masked_attention_triton", "shared_projection_triton"]
