"""The single-sequence Kimi Linear model against transformers on tiny random checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, KimiLinearConfig, KimiLinearForCausalLM

from prfaas.model.kimi_model import KimiSequenceModel
from prfaas.model.kimi_weights import kimi_module_weights

Tensor = torch.Tensor
ATOL = 1e-4
VOCAB = 97


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


BASE = {
    "vocab_size": VOCAB,
    "hidden_size": 48,
    "intermediate_size": 64,
    "moe_intermediate_size": 24,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 12,
    "num_experts": 6,
    "num_experts_per_token": 2,
    "num_expert_group": 3,
    "topk_group": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
KDA, MLA = "linear_attention", "full_attention"
# (layer pattern, first_k_dense_replace): 3:1, 1:1, full attention first, a single MLA layer,
# all dense and all MoE.
PATTERNS = {
    "3to1": ([KDA, KDA, KDA, MLA], 1),
    "1to1": ([KDA, MLA, KDA, MLA], 0),
    "mla_first": ([MLA, KDA, KDA], 1),
    "single_mla": ([KDA, MLA, KDA], 3),
}


def _save_random_checkpoint(folder: Path, layer_types: list[str], first_dense: int) -> None:
    config = KimiLinearConfig(
        **BASE,
        num_hidden_layers=len(layer_types),
        layer_types=layer_types,
        first_k_dense_replace=first_dense,
        linear_attn_config={"head_dim": 8, "num_heads": 4, "short_conv_kernel_size": 4},
    )
    torch.manual_seed(0)
    model = KimiLinearForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
    model.save_pretrained(folder)


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    _save_random_checkpoint(folder, *PATTERNS[request.param])
    return folder


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
