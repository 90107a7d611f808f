"""Synthetic long-range recall data: multi-query associative recall (MQAR) and passkey retrieval.

Both return next-token-prediction pairs ``inputs [N, L]`` (int64) and ``labels [N, L]`` with -100 where
no prediction is scored. Generation is deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmseq.errors import UserError

IGNORE = -100


def _topk_without_replacement(rng: np.random.Generator, logits: np.ndarray, n: int, k: int) -> np.ndarray:
    """k distinct draws per row from softmax(logits) (Gumbel top-k): [n, k] indices."""
    g = rng.gumbel(size=(n, logits.shape[-1])) + logits
    return np.argsort(-g, axis=1)[:, :k]


def make_mqar(num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, seed: int,
              power_a: float = 0.01) -> dict[str, torch.Tensor]:
    """MQAR as in Zoology: k key-value pairs first, then the keys queried again at power-law gaps.

    Keys come from [1, V/2), values from [V/2, V), distinct within an example. The label at each query
    key is its value; other positions are -100; unqueried slots hold random tokens other than the keys.
    """
    L, k, V = seq_len, num_kv_pairs, vocab_size
    if 4 * k > L:
        raise ValueError(f"num_kv_pairs={k} needs seq_len >= 4 * num_kv_pairs = {4 * k}, got {L}")
    if k > V // 2 - 1:
        raise ValueError(f"num_kv_pairs={k} needs vocab_size >= 2 * (num_kv_pairs + 1) = {2 * (k + 1)}, got {V}")
    rng = np.random.default_rng(seed)
    n = num_examples
    half = V // 2
    keys = _topk_without_replacement(rng, np.zeros(half - 1), n, k) + 1
    values = _topk_without_replacement(rng, np.zeros(V - half), n, k) + half
    slots = (L - 2 * k) // 2
    gaps = np.arange(1, slots + 1, dtype=np.float64)
    chosen = _topk_without_replacement(rng, (power_a - 1) * np.log(gaps), n, k)  # p(g) ∝ g^(a-1)
    seq = rng.integers(0, V, size=(n, L))
    # Filler never repeats one of the example's keys: with a small vocabulary such repeats are frequent and
    # make the query ambiguous (Zoology's vocabulary of 8192 avoids them by size alone). 0 is never a key.
    seq[(seq[:, :, None] == keys[:, None, :]).any(-1)] = 0
    seq[:, 0:2 * k:2] = keys
    seq[:, 1:2 * k:2] = values
    rows = np.arange(n)[:, None]
    qpos = 2 * k + 2 * chosen
    seq[rows, qpos] = keys  # as in Zoology the answer is not in the input: the token after a query is filler
    labels = np.full((n, L), IGNORE)
    labels[rows, qpos] = values
    return {"inputs": torch.from_numpy(seq.astype(np.int64)), "labels": torch.from_numpy(labels.astype(np.int64))}


# Passkey vocabulary: digits 0-9, three markers, then filler tokens.
KEY_START, KEY_END, QUERY = 10, 11, 12
FILLER_START = 13


def passkey_vocab_size(filler_vocab: int) -> int:
    return FILLER_START + filler_vocab


def make_passkey(num_examples: int, seq_len: int, n_digits: int, filler_vocab: int, seed: int,
                 depths: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Passkey retrieval: a repeated filler "sentence" hides ``KEY_START d1..dn KEY_END`` at some depth;
    the sequence ends with ``QUERY d1..dn`` and the model must recall the digits.

    ``depths`` (fractions in [0, 1]) cycles over examples; None draws each depth uniformly.
    Returns inputs, labels [N, L] and depth [N] (float).
    """
    L, n = seq_len, n_digits
    body = L - (n + 1)  # room before the final QUERY d1..dn
    if body < n + 2 + 1:
        raise ValueError(f"seq_len={L} is too short for n_digits={n}: need at least {2 * n + 4}")
    rng = np.random.default_rng(seed)
    sentence = rng.integers(FILLER_START, FILLER_START + filler_vocab, size=8)
    filler = np.resize(sentence, body)
    inputs = np.empty((num_examples, L), dtype=np.int64)
    labels = np.full((num_examples, L), IGNORE, dtype=np.int64)
    depth = np.empty(num_examples)
    digits = rng.integers(0, 10, size=(num_examples, n))
    span = body - (n + 2)
    for i in range(num_examples):
        d = depths[i % len(depths)] if depths else rng.random()
        pos = int(round(d * span))
        depth[i] = d
        row = filler.copy()
        row[pos:pos + n + 2] = [KEY_START, *digits[i], KEY_END]
        inputs[i, :body] = row
        inputs[i, body] = QUERY
        inputs[i, body + 1:] = digits[i]
        labels[i, body:body + n] = digits[i]  # predict d_j at QUERY and at each earlier digit
    return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
            "depth": torch.from_numpy(depth)}


def save_split(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def load_split(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"data file not found: {path} (make it with `mmseq data make`)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    for key in ("inputs", "labels"):
        if key not in tensors:
            raise UserError(f"{path} lacks the tensor {key!r}; expected inputs and labels [N, L]")
    return tensors
