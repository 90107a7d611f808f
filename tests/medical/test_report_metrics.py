"""mmseq.medical.report_metrics: clinical precision/recall/F1 and CRG against hand counts; BLEU-1..4 and ROUGE-L
against hand-computed examples and against corpus BLEU / LCS written out here."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mmseq.medical.ctrate import ABNORMALITIES, CTRate
from mmseq.medical.report_metrics import clinical_scores, crg_score, label_scores, nlg_scores, tokenize

# --------------------------------------------------------------------------------------------------- clinical


def test_clinical_scores_hand_example():
    generated = ["Cardiomegaly. No pleural effusion.", "A 5 mm nodule in the right upper lobe.", "Emphysema."]
    references = ["Cardiomegaly. Small left pleural effusion.", "No acute finding.", "Emphysema."]
    s = clinical_scores(generated, references)
    # TP: cardiomegaly, emphysema; FN: pleural effusion; FP: lung nodule. T = 3 * 18 = 54, A = 3.
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 1, 1, 50)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    w = (54 - 3) / (2 * 3)  # 8.5
    s_val, s_max = 2 * w - 1 * w - 1, 3 * w  # 7.5, 25.5
    assert s["crg"] == pytest.approx(s_max / (2 * s_max - s_val)) == pytest.approx(25.5 / 43.5)
    assert s["f1_cardiomegaly"] == 1.0 and s["f1_lung_nodule"] == 0.0 and s["f1_pleural_effusion"] == 0.0
    assert s["f1_hiatal_hernia"] == 1.0  # absent on both sides: agreement
    assert len([k for k in s if k.startswith("f1_")]) == 18


def test_crg_closed_forms():
    assert crg_score(tp=2, fn=1, fp=1, total=54, positives=3) == pytest.approx(0.586207, abs=1e-6)
    assert crg_score(tp=0, fn=1, fp=1, total=18, positives=1) == pytest.approx(8.5 / (17 + 9.5))
    # perfect -> 1; all missed or all flagged -> 1/3 whatever the prevalence
    for total, a in ((18, 1), (540, 37), (100, 50)):
        assert crg_score(a, 0, 0, total, a) == pytest.approx(1.0)
        assert crg_score(0, a, 0, total, a) == pytest.approx(1 / 3)
        assert crg_score(a, 0, total - a, total, a) == pytest.approx(1 / 3)
    # A = 0: S_max = T / 2 and CRG = S_max / (S_max + FP)
    assert crg_score(0, 0, 0, 36, 0) == 1.0
    assert crg_score(0, 0, 1, 36, 0) == pytest.approx(18 / 19)
    with pytest.raises(ValueError, match="positives must equal tp \\+ fn"):
        crg_score(1, 1, 0, 18, 3)
    with pytest.raises(ValueError, match="total must be > 0"):
        crg_score(0, 0, 0, 0, 0)


def test_no_positive_reference_labels():
    s = clinical_scores(["Heart size is normal.", "No pleural effusion."], ["No acute finding.", "Normal chest CT."])
    assert s["precision"] == s["recall"] == s["f1"] == s["crg"] == 1.0
    s = clinical_scores(["Cardiomegaly.", "No pleural effusion."], ["No acute finding.", "Normal chest CT."])
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 0)
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0
    assert s["crg"] == pytest.approx(18 / 19)  # T = 36, S_max = 18


def test_label_scores_matches_a_loop_and_phantom_labels(ct_phantoms):
    g = torch.Generator().manual_seed(0)
    p, r = torch.rand(40, 18, generator=g) < 0.3, torch.rand(40, 18, generator=g) < 0.2
    s = label_scores(p, r)
    tp = fp = fn = 0
    for i in range(40):
        for j in range(18):
            tp += bool(p[i, j] and r[i, j])
            fp += bool(p[i, j] and not r[i, j])
            fn += bool(r[i, j] and not p[i, j])
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (tp, fp, fn, 40 * 18 - tp - fp - fn)
    assert s["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["crg"] == pytest.approx(crg_score(tp, fn, fp, 720, tp + fn))
    # generated reports scored against their own label rows: the labeler reads them back exactly
    root, _ = ct_phantoms
    ds = CTRate(root, "train")
    reports = [ds.report(i) for i in range(len(ds))]
    assert clinical_scores(reports, reports)["f1"] == 1.0
    from mmseq.medical.labeler import label_reports

    assert label_scores(label_reports(reports), ds.label_matrix())["crg"] == 1.0


def test_clinical_errors():
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        clinical_scores(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="sequences of report texts"):
        clinical_scores("Cardiomegaly.", "Cardiomegaly.")
    with pytest.raises(ValueError, match="at least one"):
        nlg_scores([], [])
    with pytest.raises(ValueError, match=r"\[N, 18\]"):
        label_scores(torch.zeros(3, 17), torch.zeros(3, 17))
    assert ABNORMALITIES[0] == "Medical material"


# --------------------------------------------------------------------------------------------------- text


def _bleu_ref(gen: list[str], ref: list[str], k: int) -> float:
    """Corpus BLEU-k written out: clipped n-gram counts pooled over the corpus, uniform weights, brevity penalty."""
    match, total = [0] * k, [0] * k
    c_len = r_len = 0
    for g, r in zip(gen, ref):
        gt, rt = tokenize(g), tokenize(r)
        c_len, r_len = c_len + len(gt), r_len + len(rt)
        for n in range(1, k + 1):
            gc = Counter(tuple(gt[i:i + n]) for i in range(len(gt) - n + 1))
            rc = Counter(tuple(rt[i:i + n]) for i in range(len(rt) - n + 1))
            match[n - 1] += sum(min(c, rc[ng]) for ng, c in gc.items())
            total[n - 1] += sum(gc.values())
    if min(match) == 0:
        return 0.0
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / k)


def _rouge_l_ref(g: str, r: str) -> float:
    a, b = tokenize(g.replace("-", " ")), tokenize(r.replace("-", " "))
    if not a and not b:
        return 1.0
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            dp[i + 1][j + 1] = dp[i][j] + 1 if a[i] == b[j] else max(dp[i][j + 1], dp[i + 1][j])
    lcs = dp[-1][-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(a), lcs / len(b)
    return 2 * p * rec / (p + rec)


def test_bleu_rouge_hand_examples():
    s = nlg_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3; equal lengths: no brevity penalty
    assert s["bleu1"] == pytest.approx(5 / 6) and s["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert s["bleu3"] == pytest.approx(0.5) and s["bleu4"] == 0.0
    assert s["rouge_l"] == pytest.approx(5 / 6)  # LCS "the cat on the mat"
    s = nlg_scores(["The cat."], ["the cat is on the mat"])  # brevity penalty exp(1 - 6/2)
    assert s["bleu1"] == pytest.approx(math.exp(-2)) and s["bleu2"] == pytest.approx(math.exp(-2))
    assert s["rouge_l"] == pytest.approx(2 * 1 * (2 / 6) / (1 + 2 / 6))
    s = nlg_scores(["a b c", "a b"], ["a b d", "a b"])  # corpus pooling: 4/5 unigrams, 2/3 bigrams
    assert s["bleu1"] == pytest.approx(0.8) and s["bleu2"] == pytest.approx(math.sqrt(0.8 * 2 / 3))
    assert s["rouge_l"] == pytest.approx((2 / 3 + 1) / 2)
    s = nlg_scores(["a b c d", ""], ["a c", ""])  # LCS 2: P 1/2, R 1 -> 2/3; two empty texts are equal
    assert s["rouge_l"] == pytest.approx((2 / 3 + 1) / 2)
    s = nlg_scores(["Small LEFT pleural effusion (2.5 cm)."], ["small left pleural effusion 2.5 cm"])
    assert s["bleu4"] == pytest.approx(1.0) and s["rouge_l"] == pytest.approx(1.0)
    assert tokenize("Ground-glass opacity, 2.5 cm; patient's.") == ["ground-glass", "opacity", "2.5", "cm",
                                                                    "patient's"]


def test_bleu_rouge_against_written_out_versions(ct_phantoms):
    root, _ = ct_phantoms
    ds = CTRate(root, "train")
    reports = [ds.report(i) for i in range(len(ds))]
    gen, ref = reports, reports[1:] + reports[:1]  # each report scored against another one
    s = nlg_scores(gen, ref)
    for k in (1, 2, 3, 4):
        assert s[f"bleu{k}"] == pytest.approx(_bleu_ref(gen, ref, k), rel=1e-5), k
    assert 0.0 < s["bleu4"] < s["bleu1"] < 1.0
    assert s["rouge_l"] == pytest.approx(sum(_rouge_l_ref(g, r) for g, r in zip(gen, ref)) / len(gen), rel=1e-5)
    same = nlg_scores(reports, reports)
    assert all(same[k] == pytest.approx(1.0) for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"))
