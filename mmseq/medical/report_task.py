"""The ``ct-report`` task: a causal mixer decoder writing radiology reports from CT token files.

Token files come from ``mmseq tokenize-ct`` over a CT-RATE-layout folder (``mmseq data make ct-phantoms`` writes
one); the reports and the 18-label table come from the same folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmseq.data import SplitDataModule
from mmseq.errors import ConfigError
from mmseq.runner.config import path_field, to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.task import Task, register_task

from .tasks import ctrate_split


@dataclass
class CTReportDataConfig:
    """Token files (``mmseq tokenize-ct DATA_ROOT/... -o TOKENS``) paired with the reports of a CT-RATE folder."""

    root: str = path_field("data/ct_phantoms", must_exist=False)  # CT-RATE layout: reports and labels CSVs
    tokens: str = path_field("data/ct_phantom_tokens", must_exist=False)  # one <volume>.safetensors per volume
    max_report_tokens: int = 192
    batch_size: int = 16
    eval_batch_size: int = 32
    num_generate: int = 64  # val/test volumes whose reports are generated for the clinical and NLG metrics
    bpe_vocab_size: int = 1000


@dataclass
class CTReportModelConfig:
    """ReportGenerator arguments (the BPE is trained on the training reports when the run starts)."""

    d_model: int = 128
    n_layers: int = 4
    mixer: dict[str, Any] = field(default_factory=lambda: {"name": "attention", "n_heads": 4})
    prefix_grid: list[int] = field(default_factory=lambda: [4, 4, 4])
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    encoder: str = "pool"  # pool: codes average-pooled per prefix_grid cell; bag: code histograms + label head
    label_prompt: bool = False  # the head's labels as prompt tokens (true labels while training)
    label_loss_weight: float = 1.0  # weight of the head's binary cross-entropy (bag encoder)
    beam_size: int = 1  # decoding for the generated-report metrics
    tokenizer_json: str | None = None  # filled from the training reports at the first build


def report_pairs(root: str, tokens: str, split: str) -> tuple[list[Path], list[str], torch.Tensor]:
    """(token files, reference reports, labels [N, 18]) of one split; missing token files are an error."""
    from .ctrate import report_text
    from .tokens import token_name

    index, rows = ctrate_split(root, split)
    files, texts, labels = [], [], []
    for i in rows:
        item = index[i]
        f = Path(tokens) / token_name(item["path"])
        if not f.is_file():
            raise ConfigError(f"config key 'data.tokens': {f} is missing; tokenize the volumes with "
                              f"`mmseq tokenize-ct {index.volume_dir} -o {tokens}`")
        files.append(f)
        texts.append(report_text(item["findings"], item["impressions"]))
        labels.append(item["labels"])
    return files, texts, torch.stack(labels) if labels else torch.zeros(0, 18, dtype=torch.bool)


class _ReportSet(Dataset):
    def __init__(self, codes: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor) -> None:
        self.codes, self.texts, self.labels = codes, texts, labels

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitem__(self, i: int):
        return self.codes[i], self.texts[i], self.labels[i], i


class CTReportDataModule(SplitDataModule):
    """Pooled token codes [N, bits, *prefix_grid], encoded reports [N, T] and labels [N, 18] per split."""

    def __init__(self, cfg, seed: int, model, num_workers: int = 0) -> None:
        super().__init__(cfg.batch_size, seed, eval_batch_size=cfg.eval_batch_size, num_workers=num_workers)
        self.cfg, self.model = cfg, model
        self.references: dict[str, list[str]] = {}
        self._baseline: str | None = None

    @property
    def baseline_report(self) -> str:
        """The most common training report: what a generator that ignores the scan would write."""
        if self._baseline is None:
            from collections import Counter

            index, rows = ctrate_split(self.cfg.root, "train", labels=False, metadata=False)
            self._baseline = Counter(index.report(i) for i in rows).most_common(1)[0][0] if rows else ""
        return self._baseline

    def load_split(self, split: str) -> Dataset:
        from .tokens import CTTokens

        files, texts, labels = report_pairs(self.cfg.root, self.cfg.tokens, split)
        if not files:
            raise ConfigError(f"config key 'data.root': {self.cfg.root} has no volumes for the {split} split")
        codes = torch.cat([self.model.prepare_codes(CTTokens.load(f).codes()[None]) for f in files])
        self.references[split] = texts
        ids = self.model.encode_text(texts, max_len=self.cfg.max_report_tokens)
        return _ReportSet(codes, ids, labels)


class CTReportModule(TaskModule):
    """Next-token cross-entropy on the report (plus the label head's binary cross-entropy for the bag
    encoder); at the end of validation and test, reports are generated for up to ``num_generate`` volumes and
    scored: clinical precision/recall/F1 over the 18 abnormalities (labeler on generated vs reference text),
    CRG, BLEU-1 and -4 and ROUGE-L, each beside the same figure for the most common training report
    (``baseline_*``). With a label head, its macro AUROC and micro-F1 are logged too, and at the end of each
    validation its per-label thresholds are refitted to the validation set (they decide the label prompt at
    test time), before that validation's reports are generated."""

    def __init__(self, model, optim, max_steps: int, *, num_generate: int, beam_size: int,
                 label_loss_weight: float = 1.0) -> None:
        super().__init__(model, optim, max_steps, metrics={}, prog_bar=())
        self.num_generate, self.beam_size, self.label_loss_weight = num_generate, beam_size, label_loss_weight
        self._kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self._probs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def forward_batch(self, batch, stage: str):
        codes, text, labels = batch[0], batch[1], batch[2]
        # teacher forcing: the label prompt holds the true labels in training and in the validation loss
        return self.model.forward_with_labels(codes, text[:, :-1], labels)

    def loss(self, outputs, batch) -> torch.Tensor:
        from .report_model import report_loss

        return report_loss(*outputs, batch[1], batch[2], self.label_loss_weight)

    def update_metrics(self, metrics, outputs, batch) -> None:
        if self.trainer.sanity_checking:
            return
        stage = "test" if self.trainer.testing else "val"
        if outputs[1] is not None:
            self._probs[stage].append((torch.sigmoid(outputs[1].float()).cpu(), batch[2].cpu()))
        have = sum(len(i) for _, i in self._kept[stage])
        if have < self.num_generate:
            take = min(self.num_generate - have, batch[0].shape[0])
            self._kept[stage].append((batch[0][:take], batch[3][:take]))

    def _end_stage(self, stage: str) -> None:
        super()._end_stage(stage)
        kept, self._kept[stage] = self._kept[stage], []
        probs, self._probs[stage] = self._probs[stage], []
        from .report_metrics import clinical_scores, fit_thresholds, label_head_scores, nlg_scores

        if probs:
            p, y = torch.cat([a for a, _ in probs]), torch.cat([b for _, b in probs])
            if stage == "val" and self.model.label_prompt:
                self.model.label_thresholds.copy_(fit_thresholds(p, y).to(self.model.label_thresholds))
            thresholds = getattr(self.model, "label_thresholds", torch.full((p.shape[1],), 0.5)).cpu()
            for name, value in label_head_scores(p, y, thresholds).items():
                self.log(f"{stage}/label_{name}", value)
        if not kept:
            return
        generated = [(int(i), text) for codes, ids in kept
                     for i, text in zip(ids, self.model.generate(codes, beam_size=self.beam_size))]
        split = "test" if stage == "test" else "val"
        refs = self.trainer.datamodule.references[split]
        hyps = [text for _, text in generated]
        targets = [refs[i] for i, _ in generated]
        keep = ("precision", "recall", "f1", "crg", "bleu1", "bleu4", "rouge_l")
        scores = {**clinical_scores(hyps, targets), **nlg_scores(hyps, targets)}
        baseline = [self.trainer.datamodule.baseline_report] * len(targets)
        base = {**clinical_scores(baseline, targets), **nlg_scores(baseline, targets)}
        for name in keep:
            self.log(f"{stage}/{name}", float(scores[name]), prog_bar=stage == "val" and name == "f1")
            # the same figure for the most common training report, written for every scan
            self.log(f"{stage}/baseline_{name}", float(base[name]))


@register_task("ct-report")
class CTReportTask(Task):
    """Write radiology reports from CT token files with a causal mixer decoder."""

    data_config = CTReportDataConfig
    model_config = CTReportModelConfig

    # With a label prompt the teacher-forced loss (true labels in the prompt) says little about the reports
    # written from the head's labels, so the best checkpoint is the one whose reports score best.
    @property
    def monitor(self) -> str:
        return "val/f1" if self.cfg.model.label_prompt else "val/loss"

    @property
    def monitor_mode(self) -> str:
        return "max" if self.cfg.model.label_prompt else "min"

    def check(self) -> None:
        from mmseq.mixers import validate_mixer_config

        validate_mixer_config(to_dict(self.cfg.model.mixer), key="model.mixer")
        if len(self.cfg.model.prefix_grid) != 3 or min(self.cfg.model.prefix_grid) < 1:
            raise ConfigError(f"config key 'model.prefix_grid': three positive sizes, got "
                              f"{list(self.cfg.model.prefix_grid)}")
        m = self.cfg.model
        from .report_model import ENCODERS

        if m.encoder not in ENCODERS:
            raise ConfigError(f"config key 'model.encoder': one of {', '.join(ENCODERS)}, got {m.encoder!r}")
        if m.label_prompt and m.encoder != "bag":
            raise ConfigError("config key 'model.label_prompt': needs model.encoder: bag (its head predicts "
                              "the labels)")

    def _token_bits(self) -> int:
        from .tokens import CTTokens

        files = sorted(Path(self.cfg.data.tokens).glob("*.safetensors"))
        if not files:
            raise ConfigError(f"config key 'data.tokens': no token files in {self.cfg.data.tokens}; make them with "
                              f"`mmseq tokenize-ct <volumes> -o {self.cfg.data.tokens}`")
        return CTTokens.load(files[0]).token_bits

    def build_model(self):
        from .report_model import ReportGenerator, train_bpe

        m, d = self.cfg.model, self.cfg.data
        tokenizer_json = m.tokenizer_json
        if not tokenizer_json:
            _, texts, _ = report_pairs(d.root, d.tokens, "train")
            tokenizer_json = train_bpe(texts, vocab_size=d.bpe_vocab_size)
        return ReportGenerator(tokenizer_json, token_bits=self._token_bits(), d_model=m.d_model,
                               n_layers=m.n_layers, mixer=to_dict(m.mixer), prefix_grid=list(m.prefix_grid),
                               mlp_ratio=m.mlp_ratio, dropout=m.dropout, max_report_tokens=d.max_report_tokens,
                               encoder=m.encoder, label_prompt=m.label_prompt)

    def build_datamodule(self) -> CTReportDataModule:
        # The reports are encoded with the model's own BPE, so the runner builds the module (with the model)
        # before the data module, in training and in evaluation alike.
        model = getattr(self, "_model", None)
        if model is None:
            raise RuntimeError("ct-report: build_module(model) must come before build_datamodule()")
        return CTReportDataModule(self.cfg.data, self.cfg.seed, model, self.cfg.trainer.num_workers)

    def build_module(self, model) -> CTReportModule:
        self._model = model
        return CTReportModule(model, self.cfg.optim, self.cfg.trainer.max_steps,
                              num_generate=self.cfg.data.num_generate, beam_size=self.cfg.model.beam_size,
                              label_loss_weight=self.cfg.model.label_loss_weight)
