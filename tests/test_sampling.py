"""The shared numpy sampler: settings, determinism and validation."""

from __future__ import annotations

import numpy as np
import pytest

from picogpt.errors import PicoError
from picogpt.sampling import Sampler, SamplingConfig

V = 10


def logits_batch() -> np.ndarray:
    return np.log(np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0, 0, 0]]) + 1e-9)


def test_greedy_is_argmax() -> None:
    s = Sampler(SamplingConfig(temperature=0), V)
    assert s.sample(logits_batch()).tolist() == [0]


def test_seed_reproducible_and_top_k_top_p_restrict() -> None:
    a = [Sampler(SamplingConfig(temperature=1.0), V, seed=3).sample(logits_batch())[0] for _ in range(1)]
    b = [Sampler(SamplingConfig(temperature=1.0), V, seed=3).sample(logits_batch())[0] for _ in range(1)]
    assert a == b
    s = Sampler(SamplingConfig(temperature=1.0, top_k=2), V, seed=0)
    draws = {int(s.sample(logits_batch())[0]) for _ in range(300)}
    assert draws == {0, 1}
    s = Sampler(SamplingConfig(temperature=1.0, top_p=0.75), V, seed=0)
    draws = {int(s.sample(logits_batch())[0]) for _ in range(300)}
    assert draws == {0, 1, 2}  # 0.5 + 0.2 < 0.75, so the third token is needed and the rest dropped


def test_distribution_matches_probabilities() -> None:
    s = Sampler(SamplingConfig(temperature=1.0), V, seed=1)
    draws = np.array([s.sample(logits_batch())[0] for _ in range(4000)])
    assert abs((draws == 0).mean() - 0.5) < 0.04
    assert abs((draws == 1).mean() - 0.2) < 0.03


def test_repetition_penalty_discourages_seen_tokens() -> None:
    s = Sampler(SamplingConfig(temperature=0, repetition_penalty=10.0), V)
    s.observe(np.array([[0]]))
    logits = np.array([[2.0, 1.0] + [0.0] * (V - 2)])
    assert s.sample(logits).tolist() == [1]


@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=-1), SamplingConfig(top_k=0), SamplingConfig(top_k=V + 1),
    SamplingConfig(top_p=0.0), SamplingConfig(top_p=1.5), SamplingConfig(repetition_penalty=0),
])
def test_nonsense_settings_rejected(cfg: SamplingConfig) -> None:
    with pytest.raises(PicoError):
        Sampler(cfg, V)


def test_noise_drawn_ahead_gives_the_draws_of_one_step_at_a_time() -> None:
    """The sampler takes its Gumbel noise from blocks drawn ahead; the ids must be those of drawing each step's
    noise when it is needed (the reference), across block boundaries too (500 steps x 2 x 88 > a block)."""
    from picogpt.sampling import NOISE_BLOCK

    logits = np.random.default_rng(1).normal(size=(500, 2, 88)) * 3
    sampler, rng = Sampler(SamplingConfig(temperature=0.7), 88, seed=7), np.random.default_rng(7)
    assert logits.size > NOISE_BLOCK
    for step in logits:
        ref = (step / 0.7 - np.log(-np.log(rng.random(step.shape)))).argmax(axis=-1)
        np.testing.assert_array_equal(sampler.sample(step), ref)
