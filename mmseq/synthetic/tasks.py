"""Synthetic recall tasks for comparing mixers: ``mqar`` and ``passkey``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mmseq.data import SplitDataModule
from mmseq.errors import ConfigError
from mmseq.mixers import validate_mixer_config
from mmseq.runner.config import path_field, to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.task import Task, register_task

from .data import IGNORE, load_split, make_mqar, make_passkey, passkey_vocab_size, save_split
from .model import SequenceLM


@dataclass
class SequenceModelConfig:
    """Arguments of SequenceLM (vocab_size comes from the data)."""

    d_model: int = 64
    n_layers: int = 2
    mixer: dict[str, Any] = field(default_factory=lambda: {"name": "attention"})
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class MQARDataConfig:
    root: str | None = path_field(None)  # folder from `mmseq data make mqar`; None generates in memory
    vocab_size: int = 64
    seq_len: int = 64
    num_kv_pairs: int = 8
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    power_a: float = 0.01
    batch_size: int = 64


@dataclass
class PasskeyDataConfig:
    root: str | None = path_field(None)
    seq_len: int = 256
    n_digits: int = 5
    filler_vocab: int = 16
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    val_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    batch_size: int = 32


class TokenDataModule(SplitDataModule):
    """Splits of (inputs, labels[, depth]) tensors, read from ``root`` or generated in memory."""

    def __init__(self, make_split, root: str | None, batch_size: int, seed: int, num_workers: int = 0,
                 vocab_size: int | None = None) -> None:
        super().__init__(batch_size, seed, num_workers=num_workers)
        self.make_split = make_split
        self.root = Path(root) if root else None
        self.vocab_size = vocab_size

    def load_split(self, split: str) -> TensorDataset:
        t = load_split(self.root / f"{split}.safetensors") if self.root else self.make_split(split)
        top = int(max(t["inputs"].max(), t["labels"].max())) if t["inputs"].numel() else -1
        if self.vocab_size is not None and top >= self.vocab_size:
            raise ConfigError(f"config key 'data.vocab_size': {split} data holds token id {top}, beyond the "
                              f"model's vocabulary of {self.vocab_size}; make the data with this config's sizes")
        extra = [t["depth"]] if "depth" in t else []
        return TensorDataset(t["inputs"], t["labels"], *extra)


def exact_match(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """preds, labels [B, L] -> [B] 1.0 where every scored position (label != IGNORE) is right."""
    return ((preds == labels) | (labels == IGNORE)).all(dim=1).float()


def scored_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """preds, labels [B, L] -> [B] fraction of each sequence's scored positions that are right."""
    scored = labels != IGNORE
    return ((preds == labels) & scored).sum(1).float() / scored.sum(1).clamp(min=1)


class RecallModule(TaskModule):
    """Next-token cross-entropy on the scored positions; accuracy per position, per sequence (``exact``) and,
    for passkey, per depth of the hidden key (``acc_depth_<d>``)."""

    def __init__(self, model, optim, max_steps: int, vocab_size: int, depths: list[float] | None = None) -> None:
        depths = list(depths or [])
        metrics = {"acc": lambda: MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE),
                   "exact": MeanMetric}
        metrics.update({f"acc_depth_{d:g}": MeanMetric for d in depths})
        super().__init__(model, optim, max_steps, metrics=metrics, prog_bar=("acc",))
        self.vocab_size = vocab_size
        self.depths = depths

    def loss(self, logits: torch.Tensor, batch) -> torch.Tensor:
        labels = batch[1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE)

    def update_metrics(self, metrics, logits: torch.Tensor, batch) -> None:
        labels = batch[1]
        preds = logits.argmax(-1)
        metrics["acc"].update(preds, labels)
        metrics["exact"].update(exact_match(preds, labels))
        if self.depths and len(batch) > 2:
            correct = scored_accuracy(preds, labels)
            for d in self.depths:
                sel = (batch[2] - d).abs() < 1e-6
                if sel.any():
                    metrics[f"acc_depth_{d:g}"].update(correct[sel])


class _RecallTask(Task):
    model_config = SequenceModelConfig
    monitor = "val/acc"
    monitor_mode = "max"

    def vocab_size(self) -> int:
        raise NotImplementedError

    def check(self) -> None:
        validate_mixer_config(to_dict(self.cfg.model.mixer), key="model.mixer")
        d = self.cfg.data
        if d.batch_size < 1:
            raise ConfigError(f"config key 'data.batch_size': must be >= 1, got {d.batch_size}")
        for key in ("num_train", "num_val", "num_test"):
            if getattr(d, key) < 1:
                raise ConfigError(f"config key 'data.{key}': must be >= 1, got {getattr(d, key)}")
        try:  # generating one example validates the sizes with the generator's own message
            self.make_split("check", num=1)
        except ValueError as e:
            raise ConfigError(f"config section 'data': {e}") from None
        if d.root:
            self.check_data_folder(Path(d.root))

    # data.* keys a data folder must have been made with (they fix the token ids and shapes)
    data_identity: tuple[str, ...] = ()

    def check_data_folder(self, root: Path) -> None:
        """A ``data.root`` from ``mmseq data make``: a folder of splits made with this config's sizes."""
        make = f"mmseq data make {self.name} {root}"
        if not root.is_dir():
            raise ConfigError(f"config key 'data.root': {root} is not a folder; make one with `{make}`")
        for split in ("train", "val", "test"):
            if not (root / f"{split}.safetensors").is_file():
                raise ConfigError(f"config key 'data.root': {root} has no {split}.safetensors; make the data "
                                  f"with `{make}`")
        from safetensors import safe_open

        try:
            with safe_open(str(root / "train.safetensors"), "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise ConfigError(f"config key 'data.root': {root}/train.safetensors is unreadable "
                              f"({str(e).splitlines()[0]})") from None
        if meta.get("task") not in (None, self.name):
            raise ConfigError(f"config key 'data.root': {root} holds {meta['task']} data, not {self.name}")
        for key in self.data_identity:
            made, wanted = meta.get(key), getattr(self.cfg.data, key)
            if made is not None and str(made) != str(wanted):
                raise ConfigError(f"config key 'data.{key}': the data in {root} was made with {key}={made}, the "
                                  f"config says {wanted}; set data.{key}={made} or remake the data")

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def build_model(self) -> SequenceLM:
        m = to_dict(self.cfg.model)
        return SequenceLM(vocab_size=self.vocab_size(), causal=True, **m)

    def build_datamodule(self) -> TokenDataModule:
        d = self.cfg.data
        return TokenDataModule(self.make_split, d.root, d.batch_size, self.cfg.seed, self.cfg.trainer.num_workers,
                               vocab_size=self.vocab_size())

    def build_module(self, model) -> RecallModule:
        return RecallModule(model, self.cfg.optim, self.cfg.trainer.max_steps, self.vocab_size())

    def split_seed(self, split: str) -> int:
        return self.cfg.seed * 10 + {"train": 1, "val": 2, "test": 3, "check": 4}[split]


@register_task("mqar")
class MQARTask(_RecallTask):
    """Multi-query associative recall (Zoology): recall the value bound to each repeated key."""

    data_config = MQARDataConfig
    data_identity = ("vocab_size", "seq_len", "num_kv_pairs")

    def vocab_size(self) -> int:
        return self.cfg.data.vocab_size

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        num = num or getattr(d, f"num_{split}")
        return make_mqar(num, d.seq_len, d.num_kv_pairs, d.vocab_size, self.split_seed(split), d.power_a)


@register_task("passkey")
class PasskeyTask(_RecallTask):
    """Passkey retrieval: recall a digit string hidden at some depth in filler text."""

    data_config = PasskeyDataConfig
    data_identity = ("seq_len", "n_digits", "filler_vocab")

    def vocab_size(self) -> int:
        return passkey_vocab_size(self.cfg.data.filler_vocab)

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        num = num or getattr(d, f"num_{split}")
        depths = None if split == "train" else list(d.val_depths)
        return make_passkey(num, d.seq_len, d.n_digits, d.filler_vocab, self.split_seed(split), depths)

    def build_module(self, model) -> RecallModule:
        return RecallModule(model, self.cfg.optim, self.cfg.trainer.max_steps, self.vocab_size(),
                            depths=list(self.cfg.data.val_depths))


def make_dataset(task: _RecallTask, out_dir: Path) -> list[Path]:
    """Write train/val/test safetensors files that ``data.root`` reads back."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    meta = {k: str(v) for k, v in to_dict(task.cfg.data).items() if k != "root"}
    for split in ("train", "val", "test"):
        path = out_dir / f"{split}.safetensors"
        save_split(task.make_split(split), path, {"task": task.name, "seed": str(task.cfg.seed), **meta})
        paths.append(path)
    return paths
