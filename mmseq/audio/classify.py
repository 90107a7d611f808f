"""Classify audio files with a trained keyword model (``mmseq classify-audio``).

A clip no longer than the model's clip length is padded around its centre; a longer clip is cut into
overlapping windows and the most confident window speaks for it. A best score under ``threshold`` is reported
as ``_unknown_`` (with the best guess alongside) rather than forced into a keyword.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mmseq.commands import shipped_model_dir
from mmseq.errors import UserError

from .io import fix_length, load_audio, sliding_windows
from .labels import SILENCE, UNKNOWN
from .model import AudioClassifier

DEFAULT_MODEL = "keywords_sc35"


@dataclass
class Prediction:
    """One clip's answer: ``label`` is ``_unknown_`` when ``score`` < threshold (``best_guess`` keeps the top)."""

    file: str
    label: str
    score: float
    best_guess: str
    top_k: list[dict] = field(default_factory=list)
    window_start_s: float = 0.0
    duration_s: float = 0.0


def default_model_dir() -> Path:
    """The small SC35 model that ships inside the package (mmseq/assets/keywords_sc35)."""
    return shipped_model_dir(DEFAULT_MODEL)


def load_classifier(checkpoint: str | Path | None = None) -> AudioClassifier:
    """A model folder, a run folder, or None for the shipped model; returns the model in eval mode."""
    return AudioClassifier.from_pretrained(checkpoint or default_model_dir()).eval()


def _clip_samples(model: AudioClassifier) -> int:
    return round(model.clip_seconds * model.sample_rate)


@torch.no_grad()
def best_window_probs(model: AudioClassifier, wave: torch.Tensor, *, hop_fraction: float = 0.25
                      ) -> tuple[torch.Tensor, float]:
    """wave [T] at the model's rate -> (class probabilities [C] of the window that answers, its start in s).

    A clip no longer than the model's clip length is one centred window. In a longer clip the window most
    confident about something other than silence answers: a keyword in a long clip is surrounded by windows
    that are (correctly) very sure of silence."""
    n = _clip_samples(model)
    if wave.shape[0] <= n:
        windows, hop = fix_length(wave, n, align="center")[None], n
    else:
        hop = max(1, round(n * hop_fraction))
        windows = sliding_windows(wave, n, hop)  # [W, n]
    probs = torch.cat([model(chunk).softmax(-1) for chunk in windows.split(64)])  # [W, C]
    speech = probs.clone()
    if SILENCE in model.labels and len(model.labels) > 1:
        speech[:, model.labels.index(SILENCE)] = -1
    best = int(speech.max(-1).values.argmax())
    return probs[best], best * hop / model.sample_rate


def classify_file(model: AudioClassifier, path: str | Path, *, top_k: int = 3, threshold: float = 0.5,
                  hop_fraction: float = 0.25, max_seconds: float = 3600.0) -> Prediction:
    """Classify one file (see ``best_window_probs``); a best score under ``threshold`` becomes _unknown_."""
    wave = load_audio(path, model.sample_rate, max_seconds=max_seconds)  # [T]
    p, start = best_window_probs(model, wave, hop_fraction=hop_fraction)
    labels = model.labels
    scores, idx = p.topk(min(top_k, len(labels)))
    top = [{"label": labels[i], "score": round(float(s), 4)} for s, i in zip(scores, idx.tolist())]
    best, score = top[0]["label"], float(scores[0])
    label = best if score >= threshold or best == UNKNOWN else UNKNOWN
    return Prediction(file=str(path), label=label, score=round(score, 4), best_guess=best, top_k=top,
                      window_start_s=round(start, 3), duration_s=round(wave.shape[0] / model.sample_rate, 3))


def classify_files(paths: list[str | Path], checkpoint: str | Path | None = None, *, top_k: int = 3,
                   threshold: float = 0.5) -> list[dict]:
    """Classify every file (see ``classify_file``); returns one dict per file, in order. A file that cannot be
    classified gets ``{"file": ..., "error": "one line"}`` instead of stopping the others."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    model = load_classifier(checkpoint)
    results = []
    for p in paths:
        # One bad clip among many is reported in its place; the others are still classified.
        try:
            results.append(asdict(classify_file(model, p, top_k=top_k, threshold=threshold)))
        except UserError as e:
            results.append({"file": str(p), "error": str(e)})
    return results
