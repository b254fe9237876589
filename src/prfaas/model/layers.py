"""Small building blocks shared by the models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMS norm computed in float32, as the reference implementations do."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # In place on the fresh product (one allocation fewer); the same values as
        # ``weight * x32.to(dtype)``.
        return x32.to(dtype).mul_(self.weight)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose CPU float32 matmul runs on
    oneDNN with the weight reordered once into its blocked layout, as vLLM's CPU backend
    does: ~20-35% less time than ``F.linear``'s MKL sgemm for 24 rows and up, the same
    result to float32 rounding. Other devices and dtypes take ``F.linear``.

    The reordered copy costs one more copy of the weight in host memory. It is rebuilt when
    the weight changes (a new tensor or an in-place write, seen by its version counter); a
    weight made under ``torch.inference_mode`` has no version counter and takes ``F.linear``.
    """

    _packed: tuple[int, int, torch.Tensor] | None = None  # (data_ptr, version, reordered)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if not (
            x.device.type == "cpu"
            and x.dim() == 2
            and x.dtype == w.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and not w.is_inference()  # no version counter to see in-place writes by
        ):
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version)
        if self._packed is None or self._packed[:2] != key:
            with torch.no_grad():
                self._packed = (*key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), None))
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self._packed[2], self.bias, "none", [], ""
        )
