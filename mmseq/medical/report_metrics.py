"""Report-generation metrics: clinical scores over CT-RATE's 18 abnormalities (precision, recall, F1, CRG) and
text-overlap scores (BLEU-1..4, ROUGE-L), as in BTB3D's evaluation (refs/btb3d.md section 5).

Clinical scores label both sides with the rule-based :mod:`mmseq.medical.labeler` (CT-RATE's own RadBERT labeler
is not available offline) and count over every (report, abnormality) pair: micro precision/recall/F1 and the
CRG score of Hamamci et al. (MIDL 2025)::

    T = N * 18 label slots, A = positive reference labels, w = (T - A) / (2A)
    s = TP * w - FN * w - FP,   S_max = A * w = (T - A) / 2,   CRG = S_max / (2 * S_max - s)

CRG is 1 for a perfect labelling; w makes a missed or found positive worth (T - A) / (2A) false positives, so the
score does not reward predicting "normal" everywhere on rare findings. With A = 0 (no positive reference label)
w is undefined; TP = A and FN = 0 then hold trivially, and the limit of the formula along them is
s = S_max - FP, i.e. CRG = S_max / (S_max + FP) with S_max = T / 2 (1 without false positives).

Text scores: reports are lower-cased and tokenized into words and numbers (punctuation dropped, "2.5" and
"ground-glass" kept whole) before torchmetrics ``BLEUScore(n_gram=k)`` (corpus-level, uniform weights, brevity
penalty, no smoothing: a corpus without any matching k-gram scores 0) and ``ROUGEScore`` rougeL F-measure
(LCS, beta = 1, averaged over pairs; pycocoevalcap's ROUGE-L uses beta = 1.2). METEOR is not computed: it needs
WordNet data (nltk) or Java with pycocoevalcap's jar, neither of which is a dependency here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from .ctrate import ABNORMALITIES
from .labeler import label_reports

__all__ = ["clinical_scores", "crg_score", "fit_thresholds", "label_head_scores", "label_scores", "nlg_scores",
           "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'\-][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers: "Small left pleural effusion (2.5 cm)." -> small left pleural effusion 2.5 cm."""
    return _TOKEN.findall(str(text).lower())


def _key(label: str) -> str:
    return "f1_" + re.sub(r"\W+", "_", label.lower()).strip("_")


def crg_score(tp: float, fn: float, fp: float, total: float, positives: float) -> float:
    """CRG from counts: ``total`` = T label slots, ``positives`` = A positive reference labels (see module doc).

    >>> round(crg_score(tp=2, fn=1, fp=1, total=54, positives=3), 6)  # w = 8.5, s = 7.5, S_max = 25.5
    0.586207
    """
    if total <= 0:
        raise ValueError(f"total must be > 0 label slots, got {total}")
    if not 0 <= positives <= total or tp + fn != positives:
        raise ValueError(f"positives must equal tp + fn and lie in [0, total], got tp={tp}, fn={fn}, "
                         f"positives={positives}, total={total}")
    neg = total - positives
    if positives == 0:  # S_max = T / 2, s = S_max - FP
        return neg / (neg + 2 * fp) if neg + fp > 0 else 1.0
    # S_max / (2 S_max - s) with numerator and denominator times 2A, so integer counts stay exact (perfect -> 1.0)
    num = positives * neg
    den = 2 * positives * neg - (tp - fn) * neg + 2 * positives * fp
    return num / den if den > 0 else 1.0  # den is 0 only when T == A and nothing is wrong


def _ratio(num: float, den: float, *, empty: float) -> float:
    return num / den if den > 0 else empty


def label_scores(predicted: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Clinical scores from label matrices ``[N, 18]`` (bool or 0/1, ABNORMALITIES order).

    Returns precision, recall, f1 (micro over all N x 18 slots), crg, the counts tp, fp, fn, tn, and per-class
    F1 as ``f1_<label>`` (snake case: ``f1_lung_nodule``). A ratio whose denominator is 0 is 0, except when
    there is no positive on either side (TP = FP = FN = 0): both sides agree and precision = recall = F1 = 1.
    """
    p, r = torch.as_tensor(predicted).bool(), torch.as_tensor(reference).bool()
    if p.dim() != 2 or p.shape != r.shape or p.shape[1] != len(ABNORMALITIES):
        raise ValueError(f"predicted and reference must both be [N, {len(ABNORMALITIES)}], got "
                         f"{list(p.shape)} and {list(r.shape)}")
    if p.shape[0] == 0:
        raise ValueError("label_scores needs at least one report, got N = 0")
    tp_c, fp_c, fn_c = (p & r).sum(0), (p & ~r).sum(0), (~p & r).sum(0)
    tp, fp, fn = int(tp_c.sum()), int(fp_c.sum()), int(fn_c.sum())
    total = p.numel()
    agree = 1.0 if tp + fp + fn == 0 else 0.0
    precision = _ratio(tp, tp + fp, empty=agree)
    recall = _ratio(tp, tp + fn, empty=agree)
    out = {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, empty=agree),
        "crg": crg_score(tp, fn, fp, total, tp + fn),
        "tp": float(tp), "fp": float(fp), "fn": float(fn), "tn": float(total - tp - fp - fn),
    }
    for i, name in enumerate(ABNORMALITIES):
        t, f_p, f_n = int(tp_c[i]), int(fp_c[i]), int(fn_c[i])
        out[_key(name)] = _ratio(2 * t, 2 * t + f_p + f_n, empty=1.0 if t + f_p + f_n == 0 else 0.0)
    return out


def fit_thresholds(probs: torch.Tensor, labels: torch.Tensor, *, candidates: int = 49,
                   rounds: int = 3) -> torch.Tensor:
    """Per-label thresholds [L] that maximise micro-F1 of ``probs >= threshold`` against ``labels`` ([N, L]).

    Coordinate ascent: each label's threshold in turn takes the best of ``candidates`` evenly spaced values in
    (0, 1) with the others held, ``rounds`` sweeps; ties keep the lower threshold. Micro-F1 couples the labels
    (a rare label's false positives cost every label's precision), hence the joint search.
    """
    p, y = torch.as_tensor(probs).double(), torch.as_tensor(labels).bool()
    if p.dim() != 2 or p.shape != y.shape or p.shape[0] == 0:
        raise ValueError(f"probs and labels must both be [N, L] with N >= 1, got {list(p.shape)} and "
                         f"{list(y.shape)}")
    grid = torch.linspace(0, 1, candidates + 2, dtype=torch.float64)[1:-1]
    th = torch.full((p.shape[1],), 0.5, dtype=torch.float64)
    yf = y.double()
    pos = yf.sum()
    for _ in range(rounds):
        for j in range(p.shape[1]):
            pred = (p >= th).double()
            tp_rest = (pred * yf).sum() - (pred[:, j] * yf[:, j]).sum()
            fp_rest = (pred * (1 - yf)).sum() - (pred[:, j] * (1 - yf[:, j])).sum()
            cand = (p[:, j, None] >= grid).double()  # [N, C]
            tp = tp_rest + (cand * yf[:, j, None]).sum(0)
            fp = fp_rest + (cand * (1 - yf[:, j, None])).sum(0)
            f1 = 2 * tp / (tp + fp + pos).clamp_min(1e-12)  # 2TP / (2TP + FP + FN), as 2TP + FN = TP + pos
            th[j] = grid[int(torch.argmax(f1))]  # argmax returns the first (lowest) maximum
    return th.float()


def label_head_scores(probs: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> dict[str, float]:
    """A label head's micro precision/recall/F1 at ``thresholds`` and its macro AUROC over the labels that have
    both classes (torchmetrics); probs and labels [N, 18]."""
    from torchmetrics.functional.classification import binary_auroc

    p, y = torch.as_tensor(probs).float(), torch.as_tensor(labels).bool()
    scores = label_scores(p >= thresholds.to(p), y)
    aucs = [binary_auroc(p[:, j], y[:, j].long()) for j in range(y.shape[1]) if 0 < int(y[:, j].sum()) < len(y)]
    return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
            "auroc": float(torch.stack(aucs).mean()) if aucs else float("nan")}


def _check_pairs(generated: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(generated, str) or isinstance(references, str):
        raise TypeError("generated and references must be sequences of report texts, not one string")
    if len(generated) != len(references):
        raise ValueError(f"generated and references must have the same length, got {len(generated)} and "
                         f"{len(references)}")
    if not generated:
        raise ValueError("need at least one (generated, reference) pair, got none")


def clinical_scores(generated: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Precision, recall, F1 (micro over the 18 abnormalities), CRG, counts and per-class ``f1_<label>``, with the
    rule-based labeler run on both sides (``label_scores`` on ``label_reports`` of each)."""
    _check_pairs(generated, references)
    return label_scores(label_reports(list(generated)), label_reports(list(references)))


def nlg_scores(generated: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """bleu1..bleu4 (corpus BLEU with uniform weights up to k-grams) and rouge_l (mean ROUGE-L F1 over pairs),
    on :func:`tokenize`-d text. One reference per generated report."""
    _check_pairs(generated, references)
    from torchmetrics.functional.text.rouge import rouge_score
    from torchmetrics.text import BLEUScore

    gen = [" ".join(tokenize(t)) for t in generated]
    ref = [" ".join(tokenize(t)) for t in references]
    out = {f"bleu{k}": float(BLEUScore(n_gram=k)(gen, [[r] for r in ref])) for k in (1, 2, 3, 4)}
    # the mean over pairs; a pair of two empty texts is equal (1), which torchmetrics would score 0
    both_empty = sum(1 for g, r in zip(gen, ref) if not g and not r)
    rest = [(g, r) for g, r in zip(gen, ref) if g or r]
    mean_rest = float(rouge_score([g for g, _ in rest], [r for _, r in rest], rouge_keys="rougeL")[
        "rougeL_fmeasure"]) if rest else 0.0
    out["rouge_l"] = (mean_rest * len(rest) + both_empty) / len(gen)
    return out
