"""MLM-U against next-token training on the same small mazes, model and budget: "Transformers Can Navigate
Mazes With Multi-Step Prediction" reports that MLM-U solves more unseen mazes exactly.

Both objectives train the same transformer (same initial weights, same batches, same steps) on 1,000 3 x 3
mazes; the comparison is the exact-path rate on 300 unseen mazes (next-token: greedy decoding, which equals
teacher-forced exact match; MLM-U: the whole path read from one forward pass with every answer token hidden).

At the sizes a CPU test affords, the claim does not reproduce with this 2-layer bidirectional trunk (the paper
trains a 20-layer encoder-decoder for far longer). This test measured next-token 0.400, MLM-U 0.190 (119 s on
2 shared cores). The same loop scoring another 300 mazes (d_model 64, batch 32, lr 3e-3):

    mazes  steps   next-token  MLM-U one pass  MLM-U confident-first
    1,000  1,000   0.377       0.140           0.367
    1,000  2,000   0.380       0.203           0.443
      300  2,000   0.293       0.170           0.277
   20,000  4,000   0.807       0.377           0.470

So the test is expected to fail (strict: it reports when MLM-U starts to win, and the mark must go).
"""

from __future__ import annotations

import pytest
import torch

from mmseq.synthetic.data import IGNORE
from mmseq.synthetic.mazes import MazeModule, make_mazes, maze_vocab_size
from mmseq.synthetic.model import SequenceLM

GRID, NUM_TRAIN, NUM_TEST = 3, 1000, 300
STEPS, BATCH, LR = 1000, 32, 3e-3
MARGIN = 0.1  # 2.5 standard errors of the difference of two rates near 0.4 over 300 mazes each
TRUNK = {"d_model": 64, "n_layers": 2, "mlp_ratio": 2, "mixer": {"name": "attention", "n_heads": 4}}


def _exact_after_training(objective: str, train: dict, test: dict) -> float:
    torch.manual_seed(0)
    model = SequenceLM(maze_vocab_size(GRID), causal=objective == "next-token", **TRUNK)
    module = MazeModule(model, {"lr": LR}, STEPS, GRID, objective)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    order = torch.Generator().manual_seed(0)  # the same batches for both objectives
    for _ in range(STEPS):
        idx = torch.randint(NUM_TRAIN, (BATCH,), generator=order)
        batch = (train["inputs"][idx], train["labels"][idx])
        loss = module.loss(module.forward_batch(batch, "train"), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits, targets = module.forward_batch((test["inputs"], test["labels"]), "test")
    return ((logits.argmax(-1) == targets) | (targets == IGNORE)).all(1).float().mean().item()


@pytest.mark.slow  # about 2 minutes on 2 shared cores
@pytest.mark.xfail(strict=True, reason="MLM-U trails next-token training at this scale (figures in the docstring)")
def test_mlmu_solves_more_unseen_mazes_than_next_token_training():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two small models: one thread is faster than two on a shared machine
    try:
        train, test = make_mazes(NUM_TRAIN, GRID, seed=1), make_mazes(NUM_TEST, GRID, seed=2)
        next_token = _exact_after_training("next-token", train, test)
        mlmu = _exact_after_training("mlm-u", train, test)
    finally:
        torch.set_num_threads(threads)
    print(f"exact path rate on unseen mazes: next-token {next_token:.3f}, MLM-U {mlmu:.3f}")
    assert mlmu > next_token + MARGIN, (next_token, mlmu)
