"""The code-histogram encoder, label head and label prompt of the report generator, and their threshold fit."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml

from mmseq.medical.report_encoder import code_histograms
from mmseq.medical.report_metrics import fit_thresholds, label_head_scores, label_scores
from mmseq.medical.report_model import ReportGenerator, train_bpe

TEXTS = ["No pleural effusion. Heart size is normal.", "Small left pleural effusion. Mild cardiomegaly.",
         "A 6 mm nodule in the right upper lobe. No consolidation.", "Emphysema in both upper lobes."] * 5


@pytest.fixture(scope="module")
def bpe() -> str:
    return train_bpe(TEXTS, vocab_size=180, min_frequency=1)


def _model(bpe: str, *, label_prompt: bool = True, mixer: dict | None = None, seed: int = 0) -> ReportGenerator:
    torch.manual_seed(seed)
    return ReportGenerator(bpe, token_bits=6, d_model=32, n_layers=2, mixer=mixer or {"name": "attention",
                           "n_heads": 2}, prefix_grid=(1, 2, 2), dropout=0.0, max_report_tokens=24,
                           encoder="bag", label_prompt=label_prompt).eval()


def _codes(b: int, shape=(3, 5, 7), seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 6, *shape, generator=torch.Generator().manual_seed(seed)).sign()


def test_code_histograms_against_a_loop():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(2, 3, 5, 3, 4, generator=g).sign()
    hist = code_histograms(codes, (2, 2, 3))
    assert hist.shape == (2, 12, 8)
    want = torch.zeros(2, 12, 8, dtype=torch.float64)
    for b in range(2):
        for i in range(5):
            for j in range(3):
                for k in range(4):
                    bits = (codes[b, :, i, j, k] > 0).long().tolist()
                    code = bits[0] * 4 + bits[1] * 2 + bits[2]  # channel 0 is the most significant bit
                    cell = ((i * 2 // 5) * 2 + (j * 2 // 3)) * 3 + (k * 3 // 4)
                    want[b, cell, code] += 1
    want /= want.sum(-1, keepdim=True)
    torch.testing.assert_close(hist.double(), want)
    # a cell that gets no position (an axis shorter than its cell count) is an all-zero row
    short = code_histograms(codes[:, :, :1], (2, 1, 1))
    assert (short[:, 1] == 0).all() and torch.allclose(short[:, 0].sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="at most 14 bits"):
        code_histograms(torch.ones(1, 15, 1, 1, 1), (1, 1, 1))


def _best_micro_f1_by_brute_force(p: torch.Tensor, y: torch.Tensor, grid: torch.Tensor) -> float:
    best = 0.0
    for th in itertools.product(grid.tolist(), repeat=p.shape[1]):
        best = max(best, label_scores_f1(p >= torch.tensor(th), y))
    return best


def label_scores_f1(pred: torch.Tensor, y: torch.Tensor) -> float:
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def test_fit_thresholds_reaches_the_brute_force_optimum_on_small_cases():
    g = torch.Generator().manual_seed(0)
    grid = torch.linspace(0, 1, 7)[1:-1]
    for trial in range(6):
        y = torch.rand(12, 3, generator=g) < 0.4
        p = (y.float() * 0.3 + torch.rand(12, 3, generator=g) * 0.7)
        th = fit_thresholds(p, y, candidates=5, rounds=4)
        got = label_scores_f1(p >= th, y)
        # coordinate ascent may stop at a local optimum; on these sizes it must reach the joint optimum or
        # come within one flipped slot of it, and never fall below the best single shared threshold
        best = _best_micro_f1_by_brute_force(p, y, grid)
        shared = max(label_scores_f1(p >= t, y) for t in grid.tolist())
        assert got >= shared - 1e-9
        assert got >= best - 0.1, (trial, got, best)
    # a separable label gets a threshold that separates it
    y = torch.tensor([[True], [False], [True], [False]])
    p = torch.tensor([[0.9], [0.2], [0.7], [0.4]])
    th = fit_thresholds(p, y)
    assert 0.4 < float(th[0]) <= 0.7


def test_label_head_scores_against_hand_counts():
    p = torch.tensor([[0.9] + [0.1] * 17, [0.6] + [0.8] + [0.0] * 16])
    y = torch.zeros(2, 18, dtype=torch.bool)
    y[0, 0] = y[1, 1] = True
    s = label_head_scores(p, y, torch.full((18,), 0.7))
    # predicted positive: (0, 0) and (1, 1): both right
    assert s["precision"] == 1.0 and s["recall"] == 1.0 and s["f1"] == 1.0
    s = label_head_scores(p, y, torch.full((18,), 0.5))  # adds (1, 0): a false positive
    assert s["precision"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(0.8)
    assert s["auroc"] == pytest.approx(1.0)  # labels 0 and 1 each rank their positive first
    assert label_scores(p >= 0.5, y)["f1"] == pytest.approx(s["f1"])


def test_codes_of_any_grid_give_the_same_prefix_as_their_fitted_form(bpe):
    model = _model(bpe)
    codes = _codes(2)
    text = model.encode_text(TEXTS[:2])
    torch.testing.assert_close(model(codes, text), model(model.prepare_codes(codes), text))
    assert model.prefix(codes).shape == (2, 4 + 18, 32)
    # frequencies, not counts: the same volume on a grid twice as fine reads the same
    even = _codes(2, shape=(2, 4, 6))
    fine = even.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(model.prepare_codes(fine), model.prepare_codes(even))
    torch.testing.assert_close(model(fine, text), model(even, text))


def test_label_prompt_follows_given_labels_else_the_thresholded_head(bpe):
    model = _model(bpe)
    codes, text = _codes(2), model.encode_text(TEXTS[:2])
    probs = model.predict_labels(codes)
    assert probs.shape == (2, 18) and ((probs > 0) & (probs < 1)).all()
    predicted = probs >= model.label_thresholds
    torch.testing.assert_close(model(codes, text), model(codes, text, predicted))
    flipped = predicted.clone()
    flipped[:, 3] = ~flipped[:, 3]
    assert not torch.allclose(model(codes, text, flipped), model(codes, text))
    # moving the thresholds moves the prompt the same way
    model.label_thresholds.fill_(1.1)
    torch.testing.assert_close(model(codes, text), model(codes, text, torch.zeros(2, 18, dtype=torch.bool)))


def test_loss_adds_the_weighted_head_bce(bpe):
    model = _model(bpe)
    codes, text = _codes(2), model.encode_text(TEXTS[:2])
    labels = torch.zeros(2, 18, dtype=torch.bool)
    labels[0, 2] = True
    base = model.loss(codes, text, labels)
    _, logits = model.forward_with_labels(codes, text[:, :-1], labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    torch.testing.assert_close(model.loss(codes, text, labels, label_weight=0.5), base + 0.5 * bce)


def test_generation_with_the_label_prompt_matches_a_full_forward(bpe):
    from mmseq.medical.report_model import BOS, EOS

    model = _model(bpe, mixer={"name": "mamba", "d_state": 4})
    codes = _codes(1)
    tokens = [BOS]
    for _ in range(24):
        nxt = int(model(codes, torch.tensor([tokens]))[0, -1].argmax())
        tokens.append(nxt)
        if nxt == EOS:
            break
    assert model.generate(codes, max_new_tokens=24) == [model.decode_text(tokens[1:])]


def test_export_keeps_encoder_head_and_thresholds(bpe, tmp_path):
    model = _model(bpe)
    model.label_thresholds.copy_(torch.linspace(0.1, 0.9, 18))
    model.save_pretrained(tmp_path / "m")
    loaded = ReportGenerator.from_pretrained(tmp_path / "m")
    codes, text = _codes(2), model.encode_text(TEXTS[:2])
    torch.testing.assert_close(loaded.label_thresholds, model.label_thresholds)
    torch.testing.assert_close(loaded(codes, text), model(codes, text), rtol=0, atol=0)


def test_bad_encoder_arguments_are_clear(bpe):
    with pytest.raises(ValueError, match="encoder must be one of"):
        ReportGenerator(bpe, encoder="resnet")
    with pytest.raises(ValueError, match="label_prompt needs the bag encoder"):
        ReportGenerator(bpe, label_prompt=True)
    with pytest.raises(ValueError, match="no label head"):
        ReportGenerator(bpe, token_bits=6, prefix_grid=(1, 1, 1)).predict_labels(_codes(1))
    with pytest.raises(ValueError, match="at most 14 bits"):
        ReportGenerator(bpe, token_bits=18, encoder="bag")


def test_ct_report_task_fits_thresholds_on_validation_and_exports_them(ct_phantoms, tmp_path):
    """A few steps of the ct-report task with the label prompt: the exported thresholds are those that
    ``fit_thresholds`` gives for the exported model's own validation probabilities (recomputed here), and
    the best checkpoint is picked by the reports' clinical F1."""
    from mmseq.medical.cli import _ctrate_sources
    from mmseq.medical.report_task import report_pairs
    from mmseq.medical.tokenizer import CTTokenizer
    from mmseq.medical.tokens import CTTokens, tokenize_many
    from mmseq.runner.train import train

    root, _ = ct_phantoms
    torch.manual_seed(0)
    tokenizer = CTTokenizer(filters=8, channel_multipliers=[1, 2], temporal_downsample=[True], num_res_blocks=1,
                            token_bits=6, norm_groups=4, preprocess={"spacing": [8.0, 8.0, 8.0]})
    tokenize_many(tokenizer, _ctrate_sources(root), tmp_path / "tokens", progress=False)
    cfg = {"task": "ct-report", "seed": 0,
           "data": {"root": str(root), "tokens": str(tmp_path / "tokens"), "batch_size": 4, "eval_batch_size": 4,
                    "num_generate": 3, "max_report_tokens": 24, "bpe_vocab_size": 300},
           "model": {"d_model": 16, "n_layers": 1, "mixer": {"name": "attention", "n_heads": 2},
                     "prefix_grid": [1, 2, 2], "encoder": "bag", "label_prompt": True},
           "trainer": {"max_steps": 4, "val_check_interval": 2, "checkpoint_every_n_steps": 2}}
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(cfg))
    metrics = train(tmp_path / "report.yaml", run_dir=tmp_path / "run")
    for key in ("val/f1", "val/label_f1", "val/label_auroc", "val/baseline_f1"):
        assert key in metrics["val"], key
    assert "test/label_f1" in metrics["test"]
    model = ReportGenerator.from_pretrained(tmp_path / "run" / "model").eval()
    files, _, labels = report_pairs(str(root), str(tmp_path / "tokens"), "val")
    with torch.no_grad():
        probs = torch.cat([model.predict_labels(CTTokens.load(f).codes()[None]) for f in files])
    torch.testing.assert_close(model.label_thresholds, fit_thresholds(probs, labels))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert any("val/f1" in str(k) for k in ckpt["callbacks"]), list(ckpt["callbacks"])
