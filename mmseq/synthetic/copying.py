"""COPY and selective copying: reproduce earlier tokens verbatim.

COPY ("Can Mamba Always Enjoy the Free Lunch?", arXiv 2410.03810): a random string, a separator, then the
string again; every token of the copy is scored. A fixed-size state cannot hold an arbitrary long string,
so accuracy against the string length separates recurrent mixers from attention.

Selective copying (the Mamba paper's variant): a few data tokens scattered among blanks, then a separator,
then the data tokens in order; the model must skip the blanks, which a time-invariant filter cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmseq.runner.config import path_field
from mmseq.runner.task import register_task

from .data import IGNORE
from .tasks import _RecallTask

BLANK, SEP = 0, 1  # data tokens are 2 .. 2 + vocab_size - 1
DATA0 = 2


def make_copy(num_examples: int, copy_len: int, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """COPY: ``x_1 .. x_n SEP x_1 .. x_n``; inputs, labels [N, 2n + 1].

    Next-token labels: at SEP the target is x_1, at the copy of x_i it is x_{i+1}; the last copied token
    and the original string are not scored.
    """
    n, V = copy_len, vocab_size
    if n < 1:
        raise ValueError(f"copy_len must be >= 1, got {n}")
    if V < 2:
        raise ValueError(f"vocab_size must be >= 2, got {V}")
    rng = np.random.default_rng(seed)
    s = DATA0 + rng.integers(0, V, size=(num_examples, n))
    inputs = np.concatenate([s, np.full((num_examples, 1), SEP), s], axis=1)
    labels = np.full_like(inputs, IGNORE)
    labels[:, n:2 * n] = s  # position n (SEP) predicts x_1, position n + i predicts x_{i+1}
    return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


def make_selective_copy(num_examples: int, seq_len: int, num_tokens: int, vocab_size: int,
                        seed: int) -> dict[str, torch.Tensor]:
    """Selective copying: ``seq_len`` positions of BLANK with ``num_tokens`` data tokens at random places,
    then SEP and the data tokens in their order; inputs, labels [N, seq_len + 1 + num_tokens].

    Labels: at SEP the first data token, at the j-th copied token the (j+1)-th; the rest -100.
    """
    L, k, V = seq_len, num_tokens, vocab_size
    if k < 1:
        raise ValueError(f"num_tokens must be >= 1, got {k}")
    if k > L:
        raise ValueError(f"num_tokens={k} must be <= seq_len={L}")
    if V < 2:
        raise ValueError(f"vocab_size must be >= 2, got {V}")
    rng = np.random.default_rng(seed)
    n = num_examples
    data = DATA0 + rng.integers(0, V, size=(n, k))
    pos = np.sort(np.argsort(rng.random((n, L)), axis=1)[:, :k], axis=1)  # k distinct positions, in order
    region = np.full((n, L), BLANK, dtype=np.int64)
    region[np.arange(n)[:, None], pos] = data
    inputs = np.concatenate([region, np.full((n, 1), SEP), data], axis=1)
    labels = np.full_like(inputs, IGNORE)
    labels[:, L:L + k] = data
    return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


@dataclass
class CopyDataConfig:
    root: str | None = path_field(None)  # folder from `mmseq data make copy`; None generates in memory
    copy_len: int = 32
    vocab_size: int = 16  # data tokens; the model's vocabulary adds BLANK and SEP
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    batch_size: int = 64


@dataclass
class SelectiveCopyDataConfig:
    root: str | None = path_field(None)  # folder from `mmseq data make selective-copy`
    seq_len: int = 64
    num_tokens: int = 8
    vocab_size: int = 16
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    batch_size: int = 64


@register_task("copy")
class CopyTask(_RecallTask):
    """COPY: repeat a random string after a separator; ``exact`` is the whole copy right."""

    data_config = CopyDataConfig
    data_identity = ("copy_len", "vocab_size")

    def vocab_size(self) -> int:
        return DATA0 + self.cfg.data.vocab_size

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        return make_copy(num or getattr(d, f"num_{split}"), d.copy_len, d.vocab_size, self.split_seed(split))


@register_task("selective-copy")
class SelectiveCopyTask(_RecallTask):
    """Selective copying: repeat the data tokens scattered among blanks, in order."""

    data_config = SelectiveCopyDataConfig
    data_identity = ("seq_len", "num_tokens", "vocab_size")

    def vocab_size(self) -> int:
        return DATA0 + self.cfg.data.vocab_size

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        return make_selective_copy(num or getattr(d, f"num_{split}"), d.seq_len, d.num_tokens, d.vocab_size,
                                   self.split_seed(split))
