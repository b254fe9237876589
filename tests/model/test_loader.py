"""The loader: tensors read one by one from safetensors, the model built in the target dtype,
the dtype bound into the fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prfaas.model.loader import ModelLoadError, load_model
from prfaas.model.safetensors_file import SafetensorsFormatError, iter_tensors, read_header


def test_reader_equals_the_safetensors_library(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.bf16": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "b.f32": torch.randn(7, generator=gen),
        "c.i64": torch.arange(4),
        "d.bool": torch.tensor([True, False, True]),
        "e.empty": torch.zeros(0, 4),
        "f.scalar": torch.tensor(2.5, dtype=torch.float16),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours = dict(iter_tensors(path))
    theirs = load_file(str(path))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape, name
        assert torch.equal(ours[name], tensor), name


def _write_raw(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    size = len(raw) if length is None else length
    path.write_bytes(size.to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "length", "match"),
    [
        ({}, b"", 1 << 40, "header length"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "outside"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "bytes"),
        ({"t": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "dtype"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", None, "shape"),
        ([1, 2], b"", None, "object"),
    ],
)
def test_malformed_files_are_refused_before_allocating(
    tmp_path: Path, header: object, data: bytes, length: int | None, match: str
) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(SafetensorsFormatError, match=match):
        read_header(path)


def test_model_is_built_in_the_target_dtype(tiny_llama: Path, cache_dir: Path) -> None:
    loaded = {
        dtype: load_model(str(tiny_llama), torch.device("cpu"), dtype, cache_dir)
        for dtype in (torch.float32, torch.bfloat16)
    }
    for dtype, model in loaded.items():
        assert {p.dtype for p in model.model.parameters()} == {dtype}
        assert {p.device.type for p in model.model.parameters()} == {"cpu"}
    # The same weights, cast once from the (float32) checkpoint.
    checkpoint = load_file(str(tiny_llama / "model.safetensors"))
    embed = checkpoint["model.embed_tokens.weight"]
    got = loaded[torch.bfloat16].model.model.embed_tokens.weight  # type: ignore[union-attr]
    assert torch.equal(got, embed.to(torch.bfloat16))
    # KV of another dtype is other KV: the fingerprints differ, and each is stable.
    fp32, bf16 = loaded[torch.float32].fingerprint, loaded[torch.bfloat16].fingerprint
    assert fp32 != bf16
    again = load_model(str(tiny_llama), torch.device("cpu"), torch.bfloat16, cache_dir)
    assert again.fingerprint == bf16


def test_a_truncated_weight_file_is_a_load_error(
    tiny_llama: Path, tmp_path: Path, cache_dir: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_llama.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="outside the file"):
        load_model(str(broken), torch.device("cpu"), torch.float32, cache_dir)


@pytest.mark.parametrize("window", [None, 24])
def test_mistral_as_transformers_writes_it(
    window: int | None, tmp_path: Path, cache_dir: Path
) -> None:
    # MistralConfig writes a sliding window by default; the engine serves full attention, equal
    # to the window's up to the window's length, so the context is capped there.
    import transformers

    from prfaas.engine.sampling_params import SamplingParams
    from tests.conftest import _tokenizer_files
    from tests.engine.helpers import hf_logits, make_engine, run_recording_logits

    config = transformers.MistralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=window,
    )
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(tmp_path)
    _tokenizer_files(tmp_path, 128)
    engine = make_engine(tmp_path, cache_dir, dtype="float32", device="cpu")
    assert engine.max_model_len == (512 if window is None else window)
    prompt = list(range(3, 19))
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    tokens, rows = run_recording_logits(engine, prompt, params)
    expected = hf_logits(tmp_path, prompt + tokens, len(prompt))
    torch.testing.assert_close(torch.stack(rows), expected, atol=1e-4, rtol=0)


def test_kv_of_another_dtype_is_refused_by_fingerprint(tiny_llama: Path, cache_dir: Path) -> None:
    from prfaas import LLM, SamplingParams
    from prfaas.engine.handoff import FingerprintMismatchError

    bf16 = LLM(str(tiny_llama), cache_dir=cache_dir, dtype="bfloat16", num_kv_blocks=32)
    fp32 = LLM(str(tiny_llama), cache_dir=cache_dir, dtype="float32", num_kv_blocks=32)
    payload = bf16.prefill(list(range(3, 40)), SamplingParams(max_tokens=4))
    assert payload.model_fingerprint == bf16.engine.fingerprint != fp32.engine.fingerprint
    with pytest.raises(FingerprintMismatchError):
        fp32.decode([payload])
    fp32.engine.check_integrity()
    assert bf16.decode([payload])[0].outputs[0].token_ids  # the same dtype accepts it
