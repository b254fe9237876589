"""The oneDNN-packed ``Linear`` against ``F.linear``, before and after its weight changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prfaas.model.layers import GateUpLinear, Linear


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
@pytest.mark.parametrize("num_rows", [1, 7, 64])
def test_packed_linear_matches_f_linear_and_follows_weight_writes(num_rows: int) -> None:
    torch.manual_seed(num_rows)
    layer = Linear(96, 80, bias=True)
    x = torch.randn(num_rows, 96)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer.packed._key is not None  # the oneDNN path ran, not the fallback
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: the packed copy must be rebuilt
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        # A strided input (a column slice) gives the same rows.
        wide = torch.randn(num_rows, 2 * 96)
        torch.testing.assert_close(
            layer(wide[:, :96]), F.linear(wide[:, :96], layer.weight, layer.bias)
        )


def test_other_dtypes_take_f_linear() -> None:
    layer = Linear(32, 16, bias=False).to(torch.bfloat16)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, layer.weight))
    assert layer.packed._key is None


def test_weights_made_in_inference_mode_take_f_linear() -> None:
    with torch.inference_mode():
        layer = Linear(32, 16, bias=False)
        x = torch.randn(4, 32)
        assert torch.equal(layer(x), F.linear(x, layer.weight))
    assert layer.packed._key is None


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
@pytest.mark.parametrize("num_rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_epilogues_match_their_unfused_reference(num_rows: int, bias: bool) -> None:
    """``forward_add`` (residual in the epilogue) and ``GateUpLinear`` (SiLU and product in
    the epilogues of two matmuls) give the separate ops' results, packed or not."""
    torch.manual_seed(num_rows)
    proj = Linear(48, 40, bias=bias)
    gate_up = GateUpLinear(40, 2 * 24, bias=bias)
    x, residual = torch.randn(num_rows, 48), torch.randn(num_rows, 40)
    with torch.inference_mode():
        out = proj.forward_add(x, residual)
        torch.testing.assert_close(out, residual + F.linear(x, proj.weight, proj.bias))
        h = torch.randn(num_rows, 40)
        gate, up = F.linear(h, gate_up.weight, gate_up.bias).chunk(2, dim=-1)
        torch.testing.assert_close(gate_up(h), F.silu(gate) * up)
    assert proj.packed._key is not None and gate_up.packed._key is not None
    assert len(gate_up.packed._parts) == 2  # gate and up packed apart
    with torch.no_grad():
        gate_up.weight[:24].mul_(-1.0)  # flips the gate half only: both parts rebuilt
    with torch.inference_mode():
        gate, up = F.linear(h, gate_up.weight, gate_up.bias).chunk(2, dim=-1)
        torch.testing.assert_close(gate_up(h), F.silu(gate) * up)
        # The bfloat16 fallback keeps the reference's two roundings.
        bf = GateUpLinear(40, 2 * 24, bias=bias).to(torch.bfloat16)
        hb = h.bfloat16()
        gate, up = F.linear(hb, bf.weight, bf.bias).chunk(2, dim=-1)
        assert torch.equal(bf(hb), F.silu(gate) * up)
        assert bf.packed._key is None
