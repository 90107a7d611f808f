"""Maze generator against brute force: the maze is a perfect maze read back from its tokens, and the path is
the one shortest path from origin to target (breadth-first search counting shortest paths)."""

from collections import deque

import pytest
import torch

from mmseq.synthetic.data import IGNORE
from mmseq.synthetic.mazes import (
    ADJ_END,
    ADJ_START,
    CELL0,
    EDGE_SEP,
    MASK,
    ORIGIN_END,
    ORIGIN_START,
    PAD,
    PATH_END,
    PATH_START,
    TARGET_END,
    TARGET_START,
    make_mazes,
    maze_length,
    maze_vocab_size,
    mlmu_mask,
    path_start,
)


def _parse(seq: list[int], n: int):
    """Tokens -> (adjacency sets, origin, target, path) by reading the grammar, checking each marker."""
    assert seq[0] == ADJ_START
    adj = {c: set() for c in range(n * n)}
    p = 1
    while seq[p] != ADJ_END:
        a, b, sep = seq[p] - CELL0, seq[p + 1] - CELL0, seq[p + 2]
        assert sep == EDGE_SEP and 0 <= a < n * n and 0 <= b < n * n
        assert abs(a // n - b // n) + abs(a % n - b % n) == 1, "an edge joins grid neighbours"
        adj[a].add(b)
        adj[b].add(a)
        p += 3
    assert seq[p + 1] == ORIGIN_START and seq[p + 3] == ORIGIN_END
    assert seq[p + 4] == TARGET_START and seq[p + 6] == TARGET_END and seq[p + 7] == PATH_START
    origin, target = seq[p + 2] - CELL0, seq[p + 5] - CELL0
    end = seq.index(PATH_END)
    path = [t - CELL0 for t in seq[p + 8:end]]
    assert all(t == PAD for t in seq[end + 1:])
    return adj, origin, target, path, p + 7


def _shortest(adj: dict, origin: int) -> tuple[dict, dict]:
    """Breadth-first search: distance to each cell and the number of shortest paths reaching it."""
    dist, count = {origin: 0}, {origin: 1}
    queue = deque([origin])
    while queue:
        c = queue.popleft()
        for x in adj[c]:
            if x not in dist:
                dist[x], count[x] = dist[c] + 1, 0
                queue.append(x)
            if dist[x] == dist[c] + 1:
                count[x] += count[c]
    return dist, count


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paths_are_the_unique_shortest_paths(n):
    d = make_mazes(200, n, seed=n)
    x, y = d["inputs"], d["labels"]
    assert x.shape == y.shape == (200, maze_length(n)) and int(x.max()) < maze_vocab_size(n)
    lengths = set()
    for i in range(200):
        seq = x[i].tolist()
        adj, origin, target, path, p0 = _parse(seq, n)
        assert p0 == path_start(n)
        assert sum(len(v) for v in adj.values()) == 2 * (n * n - 1)  # a spanning tree: n^2 - 1 edges ...
        dist, count = _shortest(adj, origin)
        assert len(dist) == n * n  # ... that reaches every cell
        assert origin != target and path[0] == origin and path[-1] == target
        assert all(b in adj[a] for a, b in zip(path, path[1:])), "each step follows an open passage"
        assert len(path) == dist[target] + 1, "the path is a shortest path"
        assert count[target] == 1, "and the only one"
        answer = (y[i] != IGNORE).nonzero().flatten().tolist()
        assert answer == list(range(p0 + 1, p0 + 2 + len(path)))  # the path cells and <PATH_END>
        assert torch.equal(y[i, answer], x[i, answer])
        lengths.add(len(path))
    assert len(lengths) > 1 or n == 2


def test_mazes_are_deterministic_and_varied():
    a, b, c = (make_mazes(20, 4, seed=s)["inputs"] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 20


def test_mlmu_mask_hides_only_the_answer_at_a_uniform_rate():
    x = make_mazes(4000, 3, seed=0)["inputs"]
    a0 = path_start(3) + 1
    gen = torch.Generator().manual_seed(0)
    masked, hidden = mlmu_mask(x, a0, generator=gen)
    assert not hidden[:, :a0].any() and torch.equal(masked[:, :a0], x[:, :a0])
    assert (masked[hidden] == MASK).all() and torch.equal(masked[~hidden], x[~hidden])
    rate = hidden[:, a0:].float().mean(1)  # per sequence ~ 1 - r, r ~ U(0, 1): mean 1/2, spread over [0, 1]
    assert rate.mean().item() == pytest.approx(0.5, abs=0.03)
    assert (rate < 0.1).float().mean().item() == pytest.approx(0.1, abs=0.03)
    assert (rate > 0.9).float().mean().item() == pytest.approx(0.1, abs=0.03)
    _, all_hidden = mlmu_mask(x, a0, visible_rate=torch.zeros(len(x)))
    assert all_hidden[:, a0:].all()


class _Spy(torch.nn.Module):
    """Records its input and returns one-hot logits of ``answer(tokens)``."""

    def __init__(self, answer) -> None:
        super().__init__()
        self.answer, self.seen = answer, None
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seen = tokens.clone()
        return torch.nn.functional.one_hot(self.answer(tokens), maze_vocab_size(3)).float() * 10 + self.dummy


def test_both_objectives_score_the_path_the_same_way():
    from mmseq.synthetic.mazes import MazeModule

    d = make_mazes(8, 3, seed=0)
    batch = (d["inputs"], d["labels"])
    a0 = path_start(3) + 1
    # next-token: the logits at t are read as the token at t + 1, so a model that outputs the next token is exact
    shifted = MazeModule(_Spy(lambda t: torch.roll(t, -1, dims=1)), {"lr": 1e-3}, 1, 3, "next-token")
    logits, targets = shifted.forward_batch(batch, "val")
    assert (exact_rate(logits, targets) == 1.0) and torch.equal(targets, d["labels"][:, 1:])
    same = MazeModule(_Spy(lambda t: t), {"lr": 1e-3}, 1, 3, "next-token")
    assert exact_rate(*same.forward_batch(batch, "val")) == 0.0
    # MLM-U evaluation: the model sees the prompt and nothing of the answer
    spy = _Spy(lambda t: t)
    mlmu = MazeModule(spy, {"lr": 1e-3}, 1, 3, "mlm-u")
    _, targets = mlmu.forward_batch(batch, "val")
    assert (spy.seen[:, a0:] == MASK).all() and torch.equal(spy.seen[:, :a0], d["inputs"][:, :a0])
    assert torch.equal(targets, d["labels"])
    # MLM-U training: the padding after <PATH_END> is always hidden and never scored; the loss covers exactly the
    # hidden path tokens and <PATH_END>
    _, targets = mlmu.forward_batch(batch, "train")
    hidden = spy.seen == MASK
    pad = (d["inputs"] == PAD) & (torch.arange(d["inputs"].shape[1]) >= a0)
    assert hidden[pad].all() and torch.equal(targets != IGNORE, hidden & ~pad)
    assert torch.equal(targets[targets != IGNORE], d["inputs"][targets != IGNORE])


def exact_rate(logits: torch.Tensor, targets: torch.Tensor) -> float:
    scored = targets != IGNORE
    return ((logits.argmax(-1) == targets) | ~scored).all(1).float().mean().item()


def test_data_make_maze_writes_what_the_task_reads(tmp_path, capsys):
    from mmseq.cli import main
    from mmseq.errors import ConfigError
    from mmseq.runner.task import load_task

    out = tmp_path / "mazes"
    assert main(["data", "make", "maze", str(out), "data.grid=3", "data.num_train=16", "data.num_val=4",
                 "data.num_test=4"]) == 0
    task = load_task({"task": "maze", "data": {"root": str(out), "grid": 3}})
    dm = task.build_datamodule()
    dm.setup("fit")
    assert torch.equal(dm.splits["train"].tensors[0], make_mazes(16, 3, task.split_seed("train"))["inputs"])
    with pytest.raises(ConfigError, match="made with grid=3"):
        load_task({"task": "maze", "data": {"root": str(out), "grid": 4}})


def test_confident_first_fills_the_surest_hidden_token_each_pass():
    from mmseq.synthetic.mazes import fill_confident_first

    d = make_mazes(6, 3, seed=4)
    truth = d["inputs"]
    a0 = path_start(3) + 1
    gen = torch.Generator().manual_seed(1)
    masked, hidden = mlmu_mask(truth, a0, visible_rate=torch.full((6,), 0.5), generator=gen)
    sureness = torch.rand(truth.shape, generator=torch.Generator().manual_seed(2))  # per position, fixed
    filled_order = []

    def oracle(tokens: torch.Tensor) -> torch.Tensor:
        filled_order.append(tokens.clone())
        return torch.nn.functional.one_hot(truth, maze_vocab_size(3)).float() * (1 + 5 * sureness)[..., None]

    out = fill_confident_first(oracle, masked, hidden)
    assert torch.equal(out, truth)  # an oracle's answers fill every hidden token and touch nothing else
    assert len(filled_order) == int(hidden.sum(1).max())
    for i in range(6):  # per sequence, the positions fill in decreasing sureness
        order = [int((a[i] != b[i]).nonzero().flatten()[0]) for a, b in zip(filled_order, filled_order[1:] + [out])
                 if (a[i] != b[i]).any()]
        expected = sorted(hidden[i].nonzero().flatten().tolist(), key=lambda p: -float(sureness[i, p]))
        assert order == expected


def test_left_to_right_fills_in_order_and_stops_at_path_end():
    from mmseq.synthetic.mazes import MazeModule, fill_left_to_right

    d = make_mazes(6, 3, seed=5)
    truth, a0 = d["inputs"], path_start(3) + 1
    masked, hidden = mlmu_mask(truth, a0, visible_rate=torch.zeros(6))
    seen = []

    def oracle(tokens: torch.Tensor) -> torch.Tensor:  # right wherever every earlier answer token is filled
        seen.append(tokens.clone())
        known = (tokens != MASK).cumprod(1).bool()
        known = torch.cat([torch.ones_like(known[:, :1]), known[:, :-1]], 1)
        return torch.nn.functional.one_hot(torch.where(known, truth, PAD), maze_vocab_size(3)).float()

    out = fill_left_to_right(oracle, masked, hidden)
    scored = d["labels"] != IGNORE
    assert torch.equal(out[scored], truth[scored]) and torch.equal(out[:, :a0], truth[:, :a0])
    assert (out[~scored & hidden] == MASK).all()  # nothing after <PATH_END> is written
    assert len(seen) == int(scored.sum(1).max())  # one pass per position up to the longest answer
    mlmu = MazeModule(_Spy(lambda t: t), {"lr": 1e-3}, 1, 3, "mlm-u", decode="left-to-right")
    assert len(mlmu.forward_batch((d["inputs"], d["labels"]), "test")) == 3
