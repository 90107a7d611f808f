"""The ``keywords`` task: spoken-keyword classification from a Speech Commands tree or a folder per class."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from mmseq.data import SplitDataModule
from mmseq.errors import ConfigError
from mmseq.mixers import validate_mixer_config
from mmseq.runner.config import path_field, to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.task import Task, register_task

from .augment import AugmentConfig, WaveAugment
from .frontends import FRONTENDS
from .labels import SC10, WORD_SETS
from .model import POOLS, AudioClassifier

FORMATS = ("speech_commands", "folder")


@dataclass
class KeywordsDataConfig:
    """Where the clips are and how they are cut; ``augment`` holds AugmentConfig fields (null = no augmentation)."""

    # From `mmseq data make keywords data/keywords`, or a real Speech Commands v2 tree. Checked when the data is
    # read rather than when the config loads, so a shipped model's config loads without its data.
    root: str = path_field("data/keywords", must_exist=False)
    format: str = "speech_commands"  # speech_commands | folder (root/<class>/<clip>)
    words: str = "sc35"  # sc35 | sc10 (speech_commands format)
    unknown: bool = False  # other words of the tree become "_unknown_"
    silence: bool = False  # add a "_silence_" class cut from _background_noise_
    silence_fraction: float = 0.1
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    batch_size: int = 64
    eval_batch_size: int = 256
    augment: dict[str, Any] | None = field(default_factory=dict)


@dataclass
class AudioModelConfig:
    """Arguments of AudioClassifier (num_classes, labels and sample_rate come from the data)."""

    frontend: dict[str, Any] = field(default_factory=lambda: {"name": "logmel", "n_mels": 40})
    d_model: int = 64
    n_layers: int = 4
    mixer: dict[str, Any] = field(default_factory=lambda: {"name": "mamba"})
    causal: bool = True
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    pool: str = "mean"
    freq_mask: int = 0
    time_mask: int = 0
    labels: list[str] | None = None  # class names; filled from the data at training time


def _as_tensors(ds: Dataset) -> TensorDataset:
    """Decode every clip once into int16 [N, T] (a 10,000-clip set at 16 kHz is 320 MB) for fast epochs."""
    from tqdm.auto import tqdm

    waves, labels = [], []
    for i in tqdm(range(len(ds)), desc="loading clips", leave=False, disable=len(ds) < 2000):
        w, y = ds[i]
        waves.append((w.clamp(-1, 1) * 32767).round().to(torch.int16))
        labels.append(int(y))
    return TensorDataset(torch.stack(waves), torch.tensor(labels, dtype=torch.long))


class KeywordsDataModule(SplitDataModule):
    """Train/val/test splits of fixed-length clips, decoded once into int16 tensors."""

    def __init__(self, cfg, seed: int, num_workers: int = 0) -> None:
        super().__init__(cfg.batch_size, seed, eval_batch_size=cfg.eval_batch_size, num_workers=num_workers)
        self.cfg = cfg
        self.labels: list[str] = []
        self.background: list[torch.Tensor] = []

    def make_split(self, split: str) -> Dataset:
        from .datasets import AudioFolder, SpeechCommands

        d = self.cfg
        if d.format == "folder":
            return AudioFolder(d.root, split=split, sample_rate=d.sample_rate, clip_seconds=d.clip_seconds)
        return SpeechCommands(d.root, split, d.words, unknown=d.unknown, silence=d.silence,
                              silence_fraction=d.silence_fraction, sample_rate=d.sample_rate,
                              clip_seconds=d.clip_seconds, seed=self.seed, cache=False)

    def check_root(self) -> None:
        if not Path(self.cfg.root).is_dir():
            raise ConfigError(f"config key 'data.root': folder {self.cfg.root} does not exist; make the built-in "
                              f"set with `mmseq data make keywords {self.cfg.root}` or point it at a Speech "
                              f"Commands v2 folder")

    def load_split(self, split: str) -> TensorDataset:
        self.check_root()
        ds = self.make_split(split)
        self.labels = self.labels or list(ds.labels)  # every split has the same class list
        if split == "train":
            self.background = list(ds.background_noise)
        if len(ds) == 0:
            raise ConfigError(f"config key 'data.root': {self.cfg.root} has no {split} clips")
        return _as_tensors(ds)


def _to_float(wave: torch.Tensor) -> torch.Tensor:
    return wave.float() / 32767 if wave.dtype == torch.int16 else wave.float()


class AudioClassificationModule(TaskModule):
    """Cross-entropy on augmented clips; accuracy, macro-F1, SC10-subset accuracy and a confusion matrix (PNG)."""

    def __init__(self, model: AudioClassifier, optim, max_steps: int, labels: list[str], seed: int = 0,
                 augment: dict | None = None) -> None:
        n = len(labels)
        metrics = {"acc": lambda: MulticlassAccuracy(n, average="micro"),
                   "f1": lambda: MulticlassF1Score(n, average="macro"),
                   "confusion": lambda: MulticlassConfusionMatrix(n)}
        # On a set larger than SC10 that contains it, also report accuracy on the clips of the ten command words
        # (predictions still range over every class), the figure Speech Commands papers quote as SC10.
        sc10 = [labels.index(w) for w in SC10] if set(SC10) <= set(labels) and n > len(SC10) + 2 else []
        if sc10:
            metrics["acc_sc10"] = MeanMetric
        super().__init__(model, optim, max_steps, metrics=metrics, prog_bar=("acc",))
        self.labels = list(labels)
        self.seed = seed
        self.augment_cfg = augment
        self.augment: WaveAugment | None = None
        self.register_buffer("sc10_ids", torch.tensor(sc10, dtype=torch.long), persistent=False)

    def setup(self, stage: str) -> None:
        data_labels = getattr(self.trainer.datamodule, "labels", None)
        if data_labels and list(data_labels) != self.labels:
            raise ConfigError(f"the data's classes {data_labels} differ from the model's {self.labels} "
                              f"(config key 'model.labels'); evaluate on data with the same label set")

    def on_fit_start(self) -> None:
        if self.augment_cfg is not None:
            background = getattr(self.trainer.datamodule, "background", [])
            self.augment = WaveAugment(AugmentConfig(**self.augment_cfg), background)

    def forward_batch(self, batch, stage: str) -> torch.Tensor:
        wave = _to_float(batch[0])
        if stage == "train" and self.augment is not None:
            # Seeded by the step, so a resumed run draws the same augmentations it would have drawn.
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.global_step)
            wave = self.augment(wave.cpu(), gen).to(wave.device)
        return self.model(wave).float()

    def loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(logits, batch[1])

    def update_metrics(self, metrics, logits: torch.Tensor, batch) -> None:
        labels = batch[1]
        preds = logits.argmax(-1)
        for name in ("acc", "f1", "confusion"):
            metrics[name].update(preds, labels)
        if "acc_sc10" in metrics:
            in_sc10 = torch.isin(labels, self.sc10_ids)
            if in_sc10.any():
                metrics["acc_sc10"].update((preds[in_sc10] == labels[in_sc10]).float())

    def write_figures(self, stage: str, values: dict[str, torch.Tensor], out_dir: Path, prefix: str) -> None:
        matrix = values["confusion"]
        out = out_dir / f"{prefix}confusion_{stage}"  # eval --out eval.json: eval_confusion_test.*
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"labels": self.labels, "matrix": matrix.tolist()}))
        save_confusion_png(matrix, self.labels, out.with_suffix(".png"), title=f"{stage} confusion")


def save_confusion_png(matrix: torch.Tensor, labels: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix [C, C] (rows = true class) as a PNG heat map with the counts' accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.double()
    rates = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(labels)
    size = max(4.0, 0.28 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float(m.diag().sum() / m.sum().clamp(min=1))
    ax.set_title(f"{title} (accuracy {acc:.3f}, {int(m.sum())} clips)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


@register_task("keywords")
class KeywordsTask(Task):
    """Keyword spotting: a clip -> one of the words (SC35/SC10, plus optional _unknown_/_silence_)."""

    data_config = KeywordsDataConfig
    model_config = AudioModelConfig
    monitor = "val/acc"
    monitor_mode = "max"

    def check(self) -> None:
        d, m = self.cfg.data, self.cfg.model
        validate_mixer_config(to_dict(m.mixer), key="model.mixer")
        if d.format not in FORMATS:
            raise ConfigError(f"config key 'data.format': expected one of {', '.join(FORMATS)}, got {d.format!r}")
        if d.format == "speech_commands" and d.words not in WORD_SETS:
            raise ConfigError(f"config key 'data.words': expected one of {', '.join(WORD_SETS)}, got {d.words!r}")
        for key in ("batch_size", "eval_batch_size", "sample_rate"):
            if getattr(d, key) < 1:
                raise ConfigError(f"config key 'data.{key}': must be >= 1, got {getattr(d, key)}")
        if d.clip_seconds <= 0:
            raise ConfigError(f"config key 'data.clip_seconds': must be > 0, got {d.clip_seconds}")
        if d.augment is not None:
            try:
                AugmentConfig(**to_dict(d.augment))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config key 'data.augment': {e}") from None
        fe = to_dict(m.frontend)
        if fe.get("name") not in FRONTENDS:
            raise ConfigError(f"config key 'model.frontend.name': {FRONTENDS.unknown_message(fe.get('name'))}")
        if m.pool not in POOLS:
            raise ConfigError(f"config key 'model.pool': expected one of {', '.join(POOLS)}, got {m.pool!r}")
        try:
            self._build(list(m.labels) if m.labels else ["a", "b"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config section 'model': {e}") from None

    def data_labels(self) -> list[str]:
        """Class names in index order as the data defines them (reads folder names and split lists)."""
        datamodule = self.build_datamodule()
        datamodule.check_root()
        return list(datamodule.make_split("train").labels)

    def _build(self, labels: list[str]) -> AudioClassifier:
        m = {k: v for k, v in to_dict(self.cfg.model).items() if k != "labels"}
        d = self.cfg.data
        # The model carries what inference needs (class names, rate, clip length): it loads without its data.
        return AudioClassifier(len(labels), sample_rate=d.sample_rate, clip_seconds=d.clip_seconds, labels=labels,
                               **m)

    def build_model(self) -> AudioClassifier:
        return self._build(list(self.cfg.model.labels) if self.cfg.model.labels else self.data_labels())

    def build_datamodule(self) -> KeywordsDataModule:
        return KeywordsDataModule(self.cfg.data, self.cfg.seed, self.cfg.trainer.num_workers)

    def build_module(self, model: AudioClassifier) -> AudioClassificationModule:
        augment = None if self.cfg.data.augment is None else to_dict(self.cfg.data.augment)
        if augment is not None:
            augment.setdefault("sample_rate", self.cfg.data.sample_rate)
        return AudioClassificationModule(model, self.cfg.optim, self.cfg.trainer.max_steps, model.labels,
                                         seed=self.cfg.seed, augment=augment)
