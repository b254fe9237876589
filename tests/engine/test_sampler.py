"""The batched sampler against the per-row reference (tests/engine/sampling_reference.py)."""

from __future__ import annotations

import random

import pytest
import torch

from prfaas.engine.sampler import process_logits, sample, sampling_probs
from prfaas.engine.sampling_params import SamplingParams
from tests.engine.sampling_reference import Row, reference_probs, reference_processed

VOCAB = 32
EOS = frozenset({2})


def _random_rows(rng: random.Random, num_rows: int, greedy: bool) -> list[Row]:
    rows = []
    for _ in range(num_rows):
        min_tokens = rng.choice([0, 0, 3, 8])
        params = SamplingParams(
            max_tokens=16,
            temperature=0.0 if greedy else rng.choice([0.5, 1.0, 1.7]),
            top_k=rng.choice([0, 0, 5, 12]),
            top_p=rng.choice([1.0, 1.0, 0.9, 0.5]),
            min_p=rng.choice([0.0, 0.0, 0.05, 0.2]),
            presence_penalty=rng.choice([0.0, 0.5, -0.7, 2.0]),
            frequency_penalty=rng.choice([0.0, 0.3, -1.0, 1.5]),
            repetition_penalty=rng.choice([1.0, 1.3, 0.8, 2.0]),
            min_tokens=min_tokens,
            stop_token_ids=tuple(rng.sample(range(VOCAB), rng.choice([0, 2]))),
            ignore_eos=rng.random() < 0.3,
            logit_bias={t: rng.uniform(-5, 5) for t in rng.sample(range(VOCAB), rng.randint(0, 4))},
        )
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))]
        output = [rng.randrange(VOCAB) for _ in range(rng.randint(0, 10))]
        rows.append(Row(params, prompt, output))
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_processed_logits_equal_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    rows = _random_rows(rng, 9, greedy=False)
    logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    ours = process_logits(logits.clone(), rows, EOS)
    for i, row in enumerate(rows):
        ref = torch.tensor(reference_processed(logits[i], row, EOS))
        assert torch.equal(torch.isinf(ours[i]), torch.isinf(ref))
        finite = ~torch.isinf(ref)
        # float32 here, float64 in the reference: equal to 1e-6 relative.
        assert torch.allclose(ours[i][finite], ref[finite], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_sampling_probabilities_equal_the_reference(seed: int) -> None:
    rng = random.Random(100 + seed)
    rows = _random_rows(rng, 9, greedy=False)
    logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    processed = process_logits(logits.clone(), rows, EOS)
    probs = sampling_probs(processed, rows)
    for i, row in enumerate(rows):
        ref = reference_probs(reference_processed(logits[i], row, EOS), row.params)
        assert torch.allclose(probs[i], torch.tensor(ref), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(8))
def test_greedy_choices_follow_the_reference(seed: int) -> None:
    rng = random.Random(200 + seed)
    rows = _random_rows(rng, 16, greedy=True)
    logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    chosen = sample(logits, rows, EOS).token_ids
    expected = [
        max(range(VOCAB), key=reference_processed(logits[i], row, EOS).__getitem__)
        for i, row in enumerate(rows)
    ]
    assert chosen == expected


def test_each_penalty_changes_the_greedy_choice_as_specified() -> None:
    logits = torch.full((1, VOCAB), -1.0)
    logits[0, 5], logits[0, 7], logits[0, 9] = 3.0, 2.5, -0.5

    def pick(params: SamplingParams, prompt: list[int], output: list[int]) -> int:
        return sample(logits, [Row(params, prompt, output)], EOS).token_ids[0]

    base = SamplingParams(temperature=0.0)
    assert pick(base, [5], [5, 5]) == 5
    # 3.0 - 2 * 0.3 = 2.4 < 2.5.
    assert pick(SamplingParams(temperature=0.0, frequency_penalty=0.3), [], [5, 5]) == 7
    assert pick(SamplingParams(temperature=0.0, frequency_penalty=0.3), [5, 5], []) == 5
    # Presence counts an output token once: 3.0 - 0.4 = 2.6 > 2.5.
    assert pick(SamplingParams(temperature=0.0, presence_penalty=0.4), [], [5, 5]) == 5
    assert pick(SamplingParams(temperature=0.0, presence_penalty=0.6), [], [5]) == 7
    # Repetition counts prompt tokens too: 3.0 / 1.3 < 2.5.
    assert pick(SamplingParams(temperature=0.0, repetition_penalty=1.3), [5], []) == 7
    # The bias comes before the penalty: (-0.5 + 3.6) / 1.1 = 2.82 < 3.0 (the other order
    # would give -0.55 + 3.6 = 3.05 and pick 9).
    assert pick(SamplingParams(temperature=0.0, logit_bias={9: 3.6}), [], []) == 9
    biased = SamplingParams(temperature=0.0, logit_bias={9: 3.6}, repetition_penalty=1.1)
    assert pick(biased, [9], []) == 5


def test_repetition_penalty_multiplies_negative_logits() -> None:
    logits = torch.full((1, VOCAB), -3.0)
    logits[0, 9], logits[0, 4] = -0.5, -0.8
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    # -0.5 * 2 = -1.0 < -0.8 (dividing would give -0.25 and keep 9).
    assert sample(logits, [Row(params, [9], [])], EOS).token_ids == [4]
    assert sample(logits, [Row(params, [1], [])], EOS).token_ids == [9]


def test_min_tokens_masks_eos_and_stop_tokens_until_reached() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 2], logits[0, 4], logits[0, 6] = 9.0, 8.0, 1.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(4,))
    assert sample(logits, [Row(params, [1], [])], EOS).token_ids == [6]
    assert sample(logits, [Row(params, [1], [7])], EOS).token_ids == [6]
    assert sample(logits, [Row(params, [1], [7, 7])], EOS).token_ids == [2]
    no_eos = SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True)
    assert sample(logits, [Row(no_eos, [1], [])], EOS).token_ids == [2]


def test_seeded_draws_depend_on_seed_and_position_only() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, seed=42)
    other = SamplingParams(temperature=0.7, top_k=5)
    rows = [Row(params, [1], [3, 4]), Row(other, [2], []), Row(params, [9], [3, 4])]
    first = sample(logits, rows, EOS).token_ids
    alone = sample(logits[:1], rows[:1], EOS).token_ids
    assert first[0] == alone[0]
    draws = {sample(logits[:1], [Row(params, [1], [0] * n)], EOS).token_ids[0] for n in range(30)}
    assert len(draws) > 3  # positions draw differently


def test_draws_follow_the_sampling_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, 1.5, -3.0, 0.2]])
    params = SamplingParams(temperature=0.8, top_p=0.95)
    rows = [Row(params, [1], [])] * 4000
    batch = logits.expand(len(rows), -1)
    counts = torch.bincount(torch.tensor(sample(batch, rows).token_ids), minlength=8)
    expected = torch.tensor(reference_probs(logits[0].tolist(), params))
    assert (counts / len(rows) - expected).abs().max().item() < 0.03
