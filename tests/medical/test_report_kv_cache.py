"""Report decoding under a bounded KV cache (mmseq.mixers.kv_policies): the generator's ``cache_policy``."""

from __future__ import annotations

import pytest
import torch

from mmseq.medical.report_model import ReportGenerator, train_bpe
from mmseq.mixers.attention import AttentionMixer
from mmseq.mixers.kv_policies import LaCache, SinkWindowCache

TEXTS = ["No pleural effusion. Heart size is normal.", "Small left pleural effusion. Mild cardiomegaly.",
         "A 6 mm nodule in the right upper lobe. No consolidation.", "Emphysema in both upper lobes."] * 5
MAX_NEW = 24


@pytest.fixture(scope="module")
def model() -> ReportGenerator:
    torch.manual_seed(0)
    bpe = train_bpe(TEXTS, vocab_size=180, min_frequency=1)
    return ReportGenerator(bpe, token_bits=6, d_model=32, n_layers=3, mixer={"name": "attention", "n_heads": 2},
                           prefix_grid=(2, 2, 2), dropout=0.0, max_report_tokens=MAX_NEW).eval()


def _codes(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 6, 3, 4, 4, generator=torch.Generator().manual_seed(1)).sign()


@pytest.fixture
def cache_sizes(monkeypatch):
    """Entries in every attention layer's cache after each step, recorded."""
    sizes: list[int] = []
    real = AttentionMixer.step

    def step(self, x_t, state):
        y, state = real(self, x_t, state)
        sizes.append(state.k.shape[2])
        return y, state

    monkeypatch.setattr(AttentionMixer, "step", step)
    return sizes


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("policy", ["window", "lacache"])
def test_a_budget_that_holds_everything_changes_nothing(model, policy, beam):
    budget = model.n_prefix + 1 + MAX_NEW
    full = model.generate(_codes(), beam_size=beam)
    bounded = SinkWindowCache(budget, sinks=4) if policy == "window" else LaCache(budget, sinks=4, span=1)
    assert model.generate(_codes(), beam_size=beam, cache_policy=bounded) == full
    assert all(m.cache_policy is None for m in model.modules() if isinstance(m, AttentionMixer)), \
        "the policy is removed after decoding"


@pytest.mark.parametrize("policy", ["window", "lacache"])
def test_every_layer_stays_within_the_budget(model, policy, cache_sizes):
    sinks, budget = model.n_prefix + 1, model.n_prefix + 6
    bounded = SinkWindowCache(budget, sinks) if policy == "window" else LaCache(budget, sinks, span=1)
    reports = model.generate(_codes(), max_new_tokens=MAX_NEW, cache_policy=bounded)
    assert len(reports) == 2
    assert max(cache_sizes) == budget, "the cache fills up to the budget and no further"
    full_sizes = []
    cache_sizes.clear()
    model.generate(_codes(), max_new_tokens=MAX_NEW)
    full_sizes = list(cache_sizes)
    assert max(full_sizes) > budget, "without a policy the same decoding holds more entries"


def test_a_policy_the_trunk_cannot_serve_is_refused(model):
    with pytest.raises(ValueError, match="span must be < n_layers"):
        model.generate(_codes(), cache_policy=LaCache(64, 4, span=16))
    assert all(m.cache_policy is None for m in model.modules() if isinstance(m, AttentionMixer))
