"""Joint recall (the HAX paper's task): a key's value depends on the context it is listed under.

The sequence lists C context blocks, ``ctx k v k v ...``, each binding every one of K keys to a value; one key
has a different value under each context. The queries that follow, ``ctx k v`` each, ask for the value of
(context, key): the label at the key is its value. Asking for every pair is multi-query joint recall, "the
whole table". A model must bind a value to the pair, not to the key alone, which is what separates
context-dependent (content-routed) mixers from fixed-pattern ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmseq.runner.config import path_field
from mmseq.runner.task import register_task

from .data import IGNORE
from .tasks import _RecallTask

SEP = 0  # between the table and the queries; contexts, keys and values follow in disjoint id ranges


def joint_recall_layout(num_contexts: int, num_keys: int, num_values: int) -> dict[str, int]:
    """First token id of each range (contexts, keys, values) and the vocabulary size."""
    ctx0 = 1
    key0 = ctx0 + num_contexts
    val0 = key0 + num_keys
    return {"ctx0": ctx0, "key0": key0, "val0": val0, "vocab_size": val0 + num_values}


def joint_recall_length(num_contexts: int, num_keys: int, num_queries: int) -> int:
    """Sequence length: C blocks of 1 + 2K tokens, the separator, then 3 tokens per query."""
    return num_contexts * (1 + 2 * num_keys) + 1 + 3 * num_queries


def make_joint_recall(num_examples: int, num_contexts: int, num_keys: int, num_values: int, num_queries: int,
                      seed: int) -> dict[str, torch.Tensor]:
    """Joint-recall examples: inputs, labels [N, L] with L = ``joint_recall_length`` (labels -100 except at
    each query's key, where the label is the value bound to (context, key)).

    Contexts and keys appear in a random order in each example; under one key the C contexts hold C distinct
    values, so the key alone never tells the answer. Queries ask distinct (context, key) pairs.
    """
    C, K, V, Q = num_contexts, num_keys, num_values, num_queries
    if C < 2:
        raise ValueError(f"num_contexts must be >= 2 (one context is plain associative recall), got {C}")
    if K < 1:
        raise ValueError(f"num_keys must be >= 1, got {K}")
    if V < C:
        raise ValueError(f"num_values={V} must be >= num_contexts={C}: a key takes a different value in each context")
    if not 1 <= Q <= C * K:
        raise ValueError(f"num_queries must be in 1..num_contexts * num_keys = {C * K}, got {Q}")
    ids = joint_recall_layout(C, K, V)
    rng = np.random.default_rng(seed)
    n = num_examples
    # values[i, c, k]: for each key, C distinct values over the contexts (a random C-subset, shuffled)
    values = np.argsort(rng.random((n, K, V)), axis=2)[:, :, :C].transpose(0, 2, 1)
    ctx_order = np.argsort(rng.random((n, C)), axis=1)  # block b lists context ctx_order[b]
    key_order = np.argsort(rng.random((n, C, K)), axis=2)  # within block b, key_order[b, j] comes j-th
    rows = np.arange(n)[:, None, None]
    block_ctx = ctx_order[:, :, None].repeat(K, axis=2)  # [n, C, K] context of each listed pair
    listed_val = values[rows, block_ctx, key_order]
    block = np.empty((n, C, 1 + 2 * K), dtype=np.int64)
    block[:, :, 0] = ids["ctx0"] + ctx_order
    block[:, :, 1::2] = ids["key0"] + key_order
    block[:, :, 2::2] = ids["val0"] + listed_val
    pairs = np.argsort(rng.random((n, C * K)), axis=1)[:, :Q]  # distinct (context, key) pairs, random order
    q_ctx, q_key = pairs // K, pairs % K
    q_val = values[np.arange(n)[:, None], q_ctx, q_key]
    query = np.stack([ids["ctx0"] + q_ctx, ids["key0"] + q_key, ids["val0"] + q_val], axis=2)  # [n, Q, 3]
    inputs = np.concatenate([block.reshape(n, -1), np.full((n, 1), SEP), query.reshape(n, -1)], axis=1)
    labels = np.full_like(inputs, IGNORE)
    start = C * (1 + 2 * K) + 1
    labels[:, start + 1::3] = ids["val0"] + q_val  # at each query key, predict its value
    return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


@dataclass
class JointRecallDataConfig:
    root: str | None = path_field(None)  # folder from `mmseq data make joint-recall`; None generates in memory
    num_contexts: int = 4
    num_keys: int = 8
    num_values: int = 16
    num_queries: int = 32  # num_contexts * num_keys asks for the whole table
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    batch_size: int = 64


@register_task("joint-recall")
class JointRecallTask(_RecallTask):
    """Joint recall: recall the value of a key under a given context (HAX, arXiv 2507.00449)."""

    data_config = JointRecallDataConfig
    data_identity = ("num_contexts", "num_keys", "num_values", "num_queries")

    def vocab_size(self) -> int:
        d = self.cfg.data
        return joint_recall_layout(d.num_contexts, d.num_keys, d.num_values)["vocab_size"]

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        num = num or getattr(d, f"num_{split}")
        return make_joint_recall(num, d.num_contexts, d.num_keys, d.num_values, d.num_queries,
                                 self.split_seed(split))
