"""Maze navigation: generated mazes with their shortest paths, trained by next-token prediction or MLM-U.

Mazes are drawn by randomized depth-first search on an n x n grid (as maze_dataset's ``gen_dfs``), so each
is a spanning tree: between two cells there is exactly one simple path, which is therefore the unique
shortest path. An example is tokenised as in "Transformers Can Navigate Mazes With Multi-Step Prediction"
(arXiv 2412.05117; maze_dataset's AOTP_UT_rasterized without the ``<-->`` tokens)::

    <ADJLIST_START> (i,j) (k,l) ; ... <ADJLIST_END> <ORIGIN_START> (i,j) <ORIGIN_END>
    <TARGET_START> (i,j) <TARGET_END> <PATH_START> (i,j) ... <PATH_END> <PAD> ...

with one token per cell. Every maze of a grid has n^2 - 1 edges, so the path always starts at the same
position; sequences are padded after ``<PATH_END>`` to the longest possible path (n^2 cells).

Objectives:

- ``next-token``: a causal model predicts each path token from the tokens before it. Its teacher-forced
  exact match equals greedy decoding's (each greedy step sees the right prefix while all are right).
- ``mlm-u`` (MLM-U): a bidirectional model; per sequence a visible rate r ~ U(0, 1), each answer token
  (path, ``<PATH_END>``) stays visible iff u_t < r, so the masked fraction is uniform; the prompt is always
  visible. The padding after ``<PATH_END>`` is always hidden and never scored, as in the paper, whose model
  leaves padding out of attention and loss: a visible pad would give the path length away, and scoring the
  pads (most of a small grid's answer) dilutes the loss on the path (at 3 x 3, 1,000 mazes, 1,000 steps this
  took the exact rate from 0.12 to 0.41). The loss is cross-entropy on the hidden path tokens. Evaluation
  hides the whole answer and reads every token from one forward pass (``decode: one-pass``), fills the answer
  left to right, one token per pass, each seeing the tokens filled before (``decode: left-to-right``, the
  paper's evaluation), or fills one token per pass, the one the model is surest of
  (``decode: confident-first``; weak once the pads are never trained, since their untrained guesses get
  filled first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mmseq.errors import ConfigError
from mmseq.runner.config import path_field, to_dict
from mmseq.runner.module import TaskModule
from mmseq.runner.task import register_task

from .data import IGNORE
from .model import SequenceLM
from .tasks import SequenceModelConfig, _RecallTask, exact_match

PAD, ADJ_START, ADJ_END, EDGE_SEP = 0, 1, 2, 3
ORIGIN_START, ORIGIN_END, TARGET_START, TARGET_END = 4, 5, 6, 7
PATH_START, PATH_END, MASK = 8, 9, 10
CELL0 = 11  # cell (i, j) of an n x n grid is token CELL0 + i * n + j
OBJECTIVES = ("next-token", "mlm-u")
DECODES = ("one-pass", "left-to-right", "confident-first")


def maze_vocab_size(grid: int) -> int:
    return CELL0 + grid * grid


def path_start(grid: int) -> int:
    """Position of ``<PATH_START>``: the adjacency list (3 tokens per edge, n^2 - 1 edges) and the prompt."""
    return 1 + 3 * (grid * grid - 1) + 1 + 3 + 3


def maze_length(grid: int) -> int:
    """Sequence length: the prompt, ``<PATH_START>``, up to n^2 path cells and ``<PATH_END>``."""
    return path_start(grid) + 1 + grid * grid + 1


def dfs_maze(grid: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A random spanning tree of the grid by randomized depth-first search: its edges as (cell, cell) with
    cells numbered i * n + j."""
    n = grid
    seen = np.zeros(n * n, dtype=bool)
    start = int(rng.integers(n * n))
    seen[start] = True
    stack, edges = [start], []
    while stack:
        c = stack[-1]
        i, j = divmod(c, n)
        nbrs = [x for x, ok in ((c - n, i > 0), (c + n, i < n - 1), (c - 1, j > 0), (c + 1, j < n - 1))
                if ok and not seen[x]]
        if not nbrs:
            stack.pop()
            continue
        nxt = nbrs[int(rng.integers(len(nbrs)))]
        seen[nxt] = True
        edges.append((c, nxt))
        stack.append(nxt)
    return edges


def tree_path(edges: list[tuple[int, int]], num_cells: int, origin: int, target: int) -> list[int]:
    """The path from origin to target (breadth-first search with parent links): a shortest path."""
    adj: list[list[int]] = [[] for _ in range(num_cells)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    parent = [-1] * num_cells
    parent[origin] = origin
    queue = deque([origin])
    while queue:
        c = queue.popleft()
        for x in adj[c]:
            if parent[x] < 0:
                parent[x] = c
                queue.append(x)
    path = [target]
    while path[-1] != origin:
        path.append(parent[path[-1]])
    return path[::-1]


def make_mazes(num_examples: int, grid: int, seed: int) -> dict[str, torch.Tensor]:
    """Mazes with their paths: inputs [N, L] (the token sequence, L = ``maze_length(grid)``) and labels
    [N, L], equal to inputs on the answer (path cells and ``<PATH_END>``) and -100 elsewhere (prompt, pad).

    Labels sit on the tokens themselves, not shifted: the next-token objective shifts them.
    """
    n = grid
    if n < 2:
        raise ValueError(f"grid must be >= 2 (a maze needs two cells), got {n}")
    rng = np.random.default_rng(seed)
    L, p0 = maze_length(n), path_start(n)
    inputs = np.full((num_examples, L), PAD, dtype=np.int64)
    labels = np.full((num_examples, L), IGNORE, dtype=np.int64)
    for e in range(num_examples):
        edges = dfs_maze(n, rng)
        order = rng.permutation(len(edges))
        flip = rng.random(len(edges)) < 0.5
        seq = [ADJ_START]
        for k in order:
            a, b = edges[k]
            a, b = (b, a) if flip[k] else (a, b)
            seq += [CELL0 + a, CELL0 + b, EDGE_SEP]
        origin, target = (int(c) for c in rng.choice(n * n, size=2, replace=False))
        path = tree_path(edges, n * n, origin, target)
        seq += [ADJ_END, ORIGIN_START, CELL0 + origin, ORIGIN_END, TARGET_START, CELL0 + target, TARGET_END,
                PATH_START]
        answer = [CELL0 + c for c in path] + [PATH_END]
        inputs[e, :p0 + 1] = seq
        inputs[e, p0 + 1:p0 + 1 + len(answer)] = answer
        labels[e, p0 + 1:p0 + 1 + len(answer)] = answer
    return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


def mlmu_mask(inputs: torch.Tensor, answer_start: int, generator: torch.Generator | None = None,
              visible_rate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM-U masking: inputs [B, L] -> (masked inputs [B, L], hidden [B, L] bool).

    Positions from ``answer_start`` on are hidden with probability 1 - r, r ~ U(0, 1) per sequence (or
    ``visible_rate`` [B]: 0 hides the whole answer); the prompt before it is always visible.
    """
    B, L = inputs.shape
    r = torch.rand(B, 1, generator=generator, device=inputs.device) if visible_rate is None \
        else visible_rate.to(inputs.device).float().view(B, 1)
    u = torch.rand(B, L, generator=generator, device=inputs.device)
    hidden = u >= r
    hidden[:, :answer_start] = False
    return inputs.masked_fill(hidden, MASK), hidden


def hide_padding(inputs: torch.Tensor, masked: torch.Tensor, hidden: torch.Tensor,
                 answer_start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide the padding after ``<PATH_END>`` as well: (masked [B, L], hidden [B, L]) from ``mlmu_mask``."""
    pad = inputs == PAD
    pad[:, :answer_start] = False
    return masked.masked_fill(pad, MASK), hidden | pad


def fill_left_to_right(model, masked: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Fill the hidden tokens of masked [B, L] in order of position, one position per forward pass, each pass
    seeing the tokens filled before; a sequence stops once it has written ``<PATH_END>`` (what follows is never
    scored). Returns the filled tokens [B, L]."""
    tokens = masked.clone()
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for pos in range(tokens.shape[1]):
        todo = hidden[:, pos] & ~done
        if not todo.any():
            continue
        pred = model(tokens)[:, pos].argmax(-1)
        tokens[todo, pos] = pred[todo]
        done |= todo & (pred == PATH_END)
    return tokens


def fill_confident_first(model, masked: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Fill the hidden tokens of masked [B, L] one per forward pass, each time the position (per sequence) whose
    prediction is most probable; returns the filled tokens [B, L]."""
    tokens, hidden = masked.clone(), hidden.clone()
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    for _ in range(int(hidden.sum(1).max())):
        prob, pred = model(tokens).softmax(-1).max(-1)
        pos = prob.masked_fill(~hidden, -1.0).argmax(1)
        todo = hidden[rows, pos]  # sequences with nothing left keep their tokens
        tokens[rows[todo], pos[todo]] = pred[rows[todo], pos[todo]]
        hidden[rows[todo], pos[todo]] = False
    return tokens


class MazeModule(TaskModule):
    """Next-token or MLM-U training on maze paths; ``acc`` per answer token and ``exact`` (whole path and
    ``<PATH_END>`` right) with the same meaning under both objectives."""

    def __init__(self, model, optim, max_steps: int, grid: int, objective: str, decode: str = "one-pass") -> None:
        vocab = maze_vocab_size(grid)
        metrics = {"acc": lambda: MulticlassAccuracy(vocab, average="micro", ignore_index=IGNORE),
                   "exact": MeanMetric}
        super().__init__(model, optim, max_steps, metrics=metrics, prog_bar=("exact",))
        self.objective = objective
        self.decode = decode
        self.answer_start = path_start(grid) + 1

    def forward_batch(self, batch, stage: str) -> tuple[torch.Tensor, ...]:
        """(logits [B, L', V], targets [B, L']) with -100 where nothing is scored; MLM-U evaluation with
        ``left-to-right`` or ``confident-first`` adds the filled tokens [B, L] (the loss stays the one-pass loss)."""
        inputs, labels = batch[0], batch[1]
        if self.objective == "next-token":
            return self.model(inputs)[:, :-1], labels[:, 1:]
        if stage == "train":
            masked, hidden = hide_padding(inputs, *mlmu_mask(inputs, self.answer_start), self.answer_start)
            # the loss covers the hidden path tokens and <PATH_END>; the padding is hidden and never scored
            return self.model(masked), torch.where(hidden, labels, IGNORE)
        masked, hidden = mlmu_mask(inputs, self.answer_start, visible_rate=torch.zeros(inputs.shape[0]))
        if self.decode == "left-to-right":
            return self.model(masked), labels, fill_left_to_right(self.model, masked, hidden)
        if self.decode == "confident-first":
            return self.model(masked), labels, fill_confident_first(self.model, masked, hidden)
        return self.model(masked), labels

    def loss(self, outputs, batch) -> torch.Tensor:
        logits, targets = outputs[:2]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=IGNORE)

    def update_metrics(self, metrics, outputs, batch) -> None:
        logits, targets = outputs[:2]
        preds = outputs[2] if len(outputs) > 2 else logits.argmax(-1)
        metrics["acc"].update(preds, targets)
        metrics["exact"].update(exact_match(preds, targets))


@dataclass
class MazeDataConfig:
    root: str | None = path_field(None)  # folder from `mmseq data make maze`; None generates in memory
    grid: int = 5  # mazes of grid x grid cells
    num_train: int = 20000
    num_val: int = 500
    num_test: int = 1000
    batch_size: int = 64


@dataclass
class MazeModelConfig(SequenceModelConfig):
    """SequenceLM's arguments and the training objective, which also fixes the attention direction
    (next-token: causal; mlm-u: bidirectional)."""

    objective: str = "next-token"  # next-token | mlm-u
    decode: str = "one-pass"  # mlm-u evaluation: one-pass | left-to-right | confident-first (one token per pass)


@register_task("maze")
class MazeTask(_RecallTask):
    """Maze navigation: write the shortest path from origin to target, by next-token prediction or MLM-U."""

    data_config = MazeDataConfig
    model_config = MazeModelConfig
    monitor = "val/exact"
    data_identity = ("grid",)

    def check(self) -> None:
        if self.cfg.model.objective not in OBJECTIVES:
            raise ConfigError(f"config key 'model.objective': expected one of {', '.join(OBJECTIVES)}, "
                              f"got {self.cfg.model.objective!r}")
        if self.cfg.model.decode not in DECODES:
            raise ConfigError(f"config key 'model.decode': expected one of {', '.join(DECODES)}, "
                              f"got {self.cfg.model.decode!r}")
        super().check()

    def vocab_size(self) -> int:
        return maze_vocab_size(self.cfg.data.grid)

    def make_split(self, split: str, num: int | None = None) -> dict[str, torch.Tensor]:
        d = self.cfg.data
        return make_mazes(num or getattr(d, f"num_{split}"), d.grid, self.split_seed(split))

    def build_model(self) -> SequenceLM:
        m = to_dict(self.cfg.model)
        objective = m.pop("objective")
        m.pop("decode")
        return SequenceLM(vocab_size=self.vocab_size(), causal=objective == "next-token", **m)

    def build_module(self, model) -> MazeModule:
        return MazeModule(model, self.cfg.optim, self.cfg.trainer.max_steps, self.cfg.data.grid,
                          self.cfg.model.objective, self.cfg.model.decode)
