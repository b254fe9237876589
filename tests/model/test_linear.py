"""The oneDNN-packed ``Linear`` against ``F.linear``, before and after its weight changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prfaas.model.layers import Linear


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
@pytest.mark.parametrize("num_rows", [1, 7, 64])
def test_packed_linear_matches_f_linear_and_follows_weight_writes(num_rows: int) -> None:
    torch.manual_seed(num_rows)
    layer = Linear(96, 80, bias=True)
    x = torch.randn(num_rows, 96)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer._packed is not None  # the oneDNN path ran, not the fallback
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
    assert layer._packed is None


def test_weights_made_in_inference_mode_take_f_linear() -> None:
    with torch.inference_mode():
        layer = Linear(32, 16, bias=False)
        x = torch.randn(4, 32)
        assert torch.equal(layer(x), F.linear(x, layer.weight))
    assert layer._packed is None
