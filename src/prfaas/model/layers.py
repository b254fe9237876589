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
        if dtype == torch.float32 == self.weight.dtype:
            # One fused kernel: the same expression in the same precision.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # In place on the fresh product (one allocation fewer); the same values as
        # ``weight * x32.to(dtype)``.
        return x32.to(dtype).mul_(self.weight)


class PackedWeight:
    """A float32 weight's ``num_parts`` row blocks reordered once into oneDNN's blocked
    layout, as vLLM's CPU backend does: ~20-35% less time than ``F.linear``'s MKL sgemm for
    24 rows and up, and several times less for a wide output at 8 to 64 rows (the logits);
    the same result to float32 rounding. Other devices and dtypes take ``F.linear``.

    The copy costs one more copy of the weight in host memory. It is rebuilt when the weight
    changes (a new tensor or an in-place write, seen by its version counter); a weight made
    under ``torch.inference_mode`` has no version counter and takes ``F.linear``.
    """

    def __init__(self, num_parts: int = 1) -> None:
        self.num_parts = num_parts
        self._key: tuple[int, int] | None = None  # the weight's (data_ptr, version)
        self._parts: list[torch.Tensor] = []

    def parts(self, weight: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor] | None:
        """The reordered row blocks of ``weight``, or None where ``F.linear`` serves ``x``."""
        if not (
            x.device.type == "cpu"
            and x.dim() == 2
            and x.dtype == weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and not weight.is_inference()  # no version counter to see in-place writes by
        ):
            return None
        key = (weight.data_ptr(), weight._version)
        if self._key != key:
            with torch.no_grad():
                self._parts = [
                    torch.ops.mkldnn._reorder_linear_weight(p.contiguous(), None)
                    for p in weight.detach().chunk(self.num_parts)
                ]
            self._key = key
        return self._parts


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: PackedWeight
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on ``packed``'s copy of the weight where it serves."""
    parts = packed.parts(weight, x)
    if parts is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), parts[0], bias, "none", [], "")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) on a ``PackedWeight``.

    ``forward_add`` adds a tensor (the residual) in the matmul's epilogue instead of in a
    pass of its own.
    """

    num_parts = 1  # row blocks of the weight packed apart (``GateUpLinear``: gate and up)
    _packed: PackedWeight | None = None

    @property
    def packed(self) -> PackedWeight:
        if self._packed is None:
            self._packed = PackedWeight(self.num_parts)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``forward(x) + other``; other: (rows, out_features), x's dtype."""
        parts = self.packed.parts(self.weight, x)
        if parts is None or not other.is_contiguous():
            return F.linear(x, self.weight, self.bias).add_(other)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), other, parts[0], self.bias, "add")


class GateUpLinear(Linear):
    """The gate and up projections of a SiLU-gated MLP as one ``(2 * inter, hidden)`` weight,
    rows [gate | up]; ``forward(x)`` returns ``silu(gate) * up`` (rows, inter).

    On the oneDNN path gate and up are two matmuls, SiLU in the first one's epilogue and
    the product in the second's: no pass over the (rows, 2 * inter) activations of its own.
    """

    num_parts = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.packed.parts(self.weight, x)
        if parts is None:
            gate, up = F.linear(x, self.weight, self.bias).chunk(2, dim=-1)
            return F.silu(gate).mul_(up)
        x = x.contiguous()
        b_gate, b_up = (None, None) if self.bias is None else self.bias.chunk(2)
        gate = torch.ops.mkldnn._linear_pointwise(x, parts[0], b_gate, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, gate, parts[1], b_up, "mul")
