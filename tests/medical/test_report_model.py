"""The report generator: BPE, causal reading of the CT prefix, and decoding against a full-forward reference."""

from __future__ import annotations

import pytest
import torch

from mmseq.medical.report_model import BOS, EOS, ReportGenerator, map_state, train_bpe

TEXTS = ["No pleural effusion. Heart size is normal.", "Small left pleural effusion. Mild cardiomegaly.",
         "A 6 mm nodule in the right upper lobe. No consolidation.", "Emphysema in both upper lobes."] * 5


@pytest.fixture(scope="module")
def bpe() -> str:
    return train_bpe(TEXTS, vocab_size=180, min_frequency=1)


def _model(bpe: str, mixer: dict, seed: int = 0) -> ReportGenerator:
    torch.manual_seed(seed)
    return ReportGenerator(bpe, token_bits=6, d_model=32, n_layers=2, mixer=mixer, prefix_grid=(2, 2, 2),
                           dropout=0.0, max_report_tokens=24).eval()


def _codes(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 6, 3, 4, 4, generator=torch.Generator().manual_seed(1)).sign()


def test_bpe_round_trip(bpe):
    model = _model(bpe, {"name": "attention", "n_heads": 2})
    ids = model.encode_text(TEXTS[:3], max_len=64)
    assert (ids[:, 0] == BOS).all() and ids.dtype == torch.long
    for row, text in zip(ids.tolist(), TEXTS[:3]):
        assert model.decode_text(row[1:]) == text


def test_text_position_t_sees_prefix_and_earlier_text_only(bpe):
    model = _model(bpe, {"name": "mamba", "d_state": 4})
    codes, text = _codes(1), model.encode_text(TEXTS[:1])
    base = model(codes, text)
    changed = text.clone()
    changed[0, 5:] = 7
    after = model(codes, changed)
    torch.testing.assert_close(after[0, :5], base[0, :5])
    assert not torch.allclose(after[0, 5:], base[0, 5:])
    other = model(-codes, text)  # the CT prefix reaches every text position
    assert not torch.allclose(other[0, 0], base[0, 0])


def _greedy_by_full_forward(model: ReportGenerator, codes: torch.Tensor, n: int) -> list[int]:
    tokens = [BOS]
    for _ in range(n):
        nxt = int(model(codes, torch.tensor([tokens]))[0, -1].argmax())
        tokens.append(nxt)
        if nxt == EOS:
            break
    return tokens[1:]


@pytest.mark.parametrize("mixer", [{"name": "attention", "n_heads": 2}, {"name": "mamba", "d_state": 4},
                                   {"name": "hyena", "l_max": 64}])
def test_stepped_greedy_equals_full_forward_greedy(bpe, mixer):
    model = _model(bpe, mixer)
    codes = _codes(1)
    want = model.decode_text(_greedy_by_full_forward(model, codes, 24))
    assert model.generate(codes, max_new_tokens=24) == [want]


def _log_prob(model: ReportGenerator, codes: torch.Tensor, text: str) -> float:
    ids = model.encode_text([text], max_len=64)
    with torch.no_grad():
        logits = model(codes, ids[:, :-1]).log_softmax(-1)
    return float(logits[0].gather(1, ids[0, 1:, None]).sum())


@pytest.mark.parametrize("mixer", [{"name": "attention", "n_heads": 2}, {"name": "hyena", "l_max": 64}])
def test_beam_search_finds_at_least_the_greedy_score(bpe, mixer):
    model = _model(bpe, mixer, seed=3)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    codes = _codes(4)
    text = model.encode_text(TEXTS[:4])
    model.train()
    for _ in range(40):  # a little training, so reports end with <eos> within the budget
        loss = model.loss(codes, text)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    greedy = model.generate(codes[:1], max_new_tokens=24)[0]
    assert model.generate(codes[:1], max_new_tokens=24, beam_size=1)[0] == greedy
    beam = model.generate(codes[:1], max_new_tokens=24, beam_size=4, length_penalty=0.0)[0]
    assert _log_prob(model, codes[:1], beam) >= _log_prob(model, codes[:1], greedy) - 1e-4


def test_map_state_reorders_batch_first_tensors_in_nested_states():
    from dataclasses import dataclass

    @dataclass
    class S:
        k: torch.Tensor
        t: int

    state = [S(torch.arange(3)[:, None].float(), 5), (torch.arange(3), torch.tensor(2.0))]
    out = map_state(state, lambda x: x.index_select(0, torch.tensor([2, 0])))
    assert out[0].k[:, 0].tolist() == [2.0, 0.0] and out[0].t == 5
    assert out[1][0].tolist() == [2, 0] and float(out[1][1]) == 2.0


def test_export_carries_the_bpe(bpe, tmp_path):
    model = _model(bpe, {"name": "attention", "n_heads": 2})
    model.save_pretrained(tmp_path / "m")
    loaded = ReportGenerator.from_pretrained(tmp_path / "m")
    codes, text = _codes(1), model.encode_text(TEXTS[:1], max_len=64)
    torch.testing.assert_close(loaded(codes, text), model(codes, text), rtol=0, atol=0)
    assert loaded.decode_text(text[0, 1:].tolist()) == TEXTS[0]


def test_bad_arguments_are_clear(bpe):
    with pytest.raises(ValueError, match="prefix_grid"):
        ReportGenerator(bpe, prefix_grid=(2, 2))
    with pytest.raises(ValueError, match="beam_size"):
        _model(bpe, {"name": "attention", "n_heads": 2}).generate(_codes(1), beam_size=0)
