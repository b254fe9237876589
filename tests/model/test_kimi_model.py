"""The single-sequence Kimi Linear model against transformers on tiny random checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, KimiLinearForCausalLM

from prfaas.model.kimi_model import KimiSequenceModel
from prfaas.model.kimi_weights import kimi_module_weights
from tests.engine.hybrid_helpers import VOCAB, save_kimi_checkpoint

Tensor = torch.Tensor
ATOL = 1e-4


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


KDA, MLA = "linear_attention", "full_attention"
# (layer pattern, first_k_dense_replace): 3:1, 1:1, full attention first, a single MLA layer,
# all dense and all MoE.
PATTERNS = {
    "3to1": ([KDA, KDA, KDA, MLA], 1),
    "1to1": ([KDA, MLA, KDA, MLA], 0),
    "mla_first": ([MLA, KDA, KDA], 1),
    "single_mla": ([KDA, MLA, KDA], 3),
}


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    return save_kimi_checkpoint(folder, *PATTERNS[request.param])


def _prompt(num_tokens: int) -> Tensor:
    return torch.randint(3, VOCAB, (num_tokens,), generator=torch.Generator().manual_seed(4))


@torch.no_grad()
def test_prefill_and_decode_match_transformers(checkpoint: Path) -> None:
    hf = KimiLinearForCausalLM.from_pretrained(checkpoint).eval()
    ours = KimiSequenceModel.from_folder(checkpoint)
    prompt = _prompt(21)

    cache = DynamicCache(config=hf.config)
    hf_logits = [hf(prompt[None], past_key_values=cache, use_cache=True).logits[0]]
    logits, state = ours(prompt, None)
    torch.testing.assert_close(logits, hf_logits[0], atol=ATOL, rtol=0)

    ours_tokens, hf_tokens = [], []
    ours_next = hf_next = int(hf_logits[0][-1].argmax())
    for _ in range(32):
        ours_tokens.append(ours_next)
        hf_tokens.append(hf_next)
        hf_step = hf(torch.tensor([[hf_next]]), past_key_values=cache, use_cache=True).logits[0]
        logits, state = ours(torch.tensor([ours_next]), state)
        torch.testing.assert_close(logits, hf_step, atol=ATOL, rtol=0)
        ours_next, hf_next = int(logits[-1].argmax()), int(hf_step[-1].argmax())
    assert ours_tokens == hf_tokens


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 13])
def test_prefill_in_two_calls_equals_one(checkpoint: Path, split: int) -> None:
    ours = KimiSequenceModel.from_folder(checkpoint)
    prompt = _prompt(70)
    logits_all, _ = ours(prompt, None)
    logits1, state = ours(prompt[:split], None)
    logits2, _ = ours(prompt[split:], state)
    # Chunk boundaries move, so float32 sums round differently: logits of magnitude ~10.
    torch.testing.assert_close(torch.cat([logits1, logits2]), logits_all, atol=ATOL, rtol=ATOL)


def test_checkpoint_names_translate_to_transformers_module_names(checkpoint: Path) -> None:
    from safetensors.torch import load_file

    hf = KimiLinearForCausalLM.from_pretrained(checkpoint)
    on_disk = load_file(checkpoint / "model.safetensors")
    assert any(".block_sparse_moe." in name for name in on_disk)  # the checkpoint layout
    translated = dict(kimi_module_weights(on_disk.items(), hf.config.num_local_experts))
    expected = hf.state_dict()
    assert translated.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(translated[name], tensor), name


def test_incomplete_or_foreign_checkpoints_are_refused(checkpoint: Path) -> None:
    from safetensors.torch import load_file

    on_disk = load_file(checkpoint / "model.safetensors")
    ours = KimiSequenceModel.from_folder(checkpoint)
    conv = next(name for name in on_disk if name.endswith("q_conv1d.weight"))
    with pytest.raises(ValueError, match="incomplete"):
        ours.load_weights((n, t) for n, t in on_disk.items() if n != conv)
    with pytest.raises(KeyError, match="no place"):
        ours.load_weights([*on_disk.items(), ("model.layers.0.extra.weight", torch.zeros(1))])
