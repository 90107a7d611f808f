"""Keyword-model accuracy under conditions it may meet in use, on a Speech Commands-layout split.

Each condition transforms the split's clips (seeded), then the model classifies them the way
``mmseq classify-audio`` does (windows over clips longer than the model's clip length). Prints a markdown
table per condition: top-1 accuracy, accuracy when low scores count as ``_unknown_``, and that share.

    python benchmarks/keyword_robustness.py --checkpoint runs/keywords_shipped --root data/keywords --split test
    python benchmarks/keyword_robustness.py --root data/kw_festival --split all   # the shipped model
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from mmseq.audio.augment import add_noise, apply_gain, colored_noise, reverberate, speed_perturb, synthetic_rir
from mmseq.audio.classify import best_window_probs, load_classifier
from mmseq.audio.datasets import SpeechCommands
from mmseq.audio.labels import SILENCE, UNKNOWN

Condition = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _pad_into(seconds: float) -> Condition:
    def f(w, g):
        n = round(seconds * 16000)
        out = 1e-4 * torch.randn(n, generator=g)
        start = int(torch.randint(0, n - w.shape[0] + 1, (1,), generator=g))
        out[start:start + w.shape[0]] += w
        return out
    return f


CONDITIONS: dict[str, Condition] = {
    "clean": lambda w, g: w,
    "quiet (-30 dB)": lambda w, g: apply_gain(w, -30.0),
    "loud (+12 dB, clipped)": lambda w, g: apply_gain(w, 12.0).clamp(-1, 1),
    "white noise 10 dB SNR": lambda w, g: add_noise(w, colored_noise(w.shape[0], "white", g), 10.0, g),
    "pink noise 0 dB SNR": lambda w, g: add_noise(w, colored_noise(w.shape[0], "pink", g), 0.0, g),
    "reverb rt60 0.6 s": lambda w, g: reverberate(w, synthetic_rir(16000, 0.6, g)),
    "slow (x0.85)": lambda w, g: speed_perturb(w, 0.85),
    "fast (x1.2)": lambda w, g: speed_perturb(w, 1.2),
    "inside 3 s of silence": _pad_into(3.0),
}


@torch.no_grad()
def evaluate(model, waves: list[torch.Tensor], targets: list[int], threshold: float
             ) -> tuple[float, float, float]:
    """(top-1 accuracy, accuracy when scores under ``threshold`` count as _unknown_, share _unknown_),
    windowing long clips as ``mmseq classify-audio`` does."""
    top1 = correct = unknown = 0
    for w, y in zip(waves, targets):
        score, idx = best_window_probs(model, w)[0].max(-1)
        top1 += int(idx) == y
        if score < threshold:
            unknown += 1
        elif int(idx) == y:
            correct += 1
    n = len(waves)
    return top1 / n, correct / n, unknown / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="run or model folder (default: the shipped model)")
    p.add_argument("--root", required=True, type=Path, help="Speech Commands-layout folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--limit", type=int, default=700, help="at most this many clips (evenly spaced)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_classifier(args.checkpoint)
    words = "sc10" if len([x for x in model.labels if not x.startswith("_")]) == 10 else "sc35"
    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    waves, targets = [], []
    for split in splits:
        ds = SpeechCommands(args.root, split, words, sample_rate=model.sample_rate, cache=False)
        for i in range(len(ds)):
            w, y = ds[i]
            name = ds.labels[y]
            if name in (UNKNOWN, SILENCE) or name not in model.labels:
                continue
            waves.append(w)
            targets.append(model.labels.index(name))
    step = max(1, len(waves) // args.limit)
    waves, targets = waves[::step], targets[::step]
    print(f"model: {args.checkpoint or 'shipped'}; data: {args.root} ({args.split}, {len(waves)} clips)")
    print(f"| condition | top-1 accuracy | accuracy (score >= {args.threshold}) | reported _unknown_ |")
    print("|---|---|---|---|")
    for name, cond in CONDITIONS.items():
        gen = torch.Generator().manual_seed(args.seed)
        top1, acc, unk = evaluate(model, [cond(w, gen) for w in waves], targets, args.threshold)
        print(f"| {name} | {top1:.3f} | {acc:.3f} | {unk:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
