"""RMSNorm written out by hand.

``torch.nn.RMSNorm`` exports to the opset-23 ``RMSNormalization`` op, which the TensorRT 10.3
parser does not know; at opset 20 the plain ops below (Pow, ReduceMean, Sqrt, Div, Mul) parse
everywhere. The mean of squares is taken in float32 even when the layer computes in float16,
as the Llama reference does, because squaring 576+ fp16 activations overflows easily.
"""

from __future__ import annotations

import torch
from torch import nn


class RmsNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim)
        dtype = x.dtype
        x32 = x.float()
        variance = x32.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
        normed = x32 * torch.rsqrt(variance + self.eps)
        return self.weight * normed.to(dtype)
