"""MLM-U against next-token training on the same small mazes, model and budget: "Transformers Can Navigate
Mazes With Multi-Step Prediction" reports that MLM-U solves more unseen mazes exactly.

Both objectives train the same transformer (same initial weights, same batches, same steps, AdamW with 5%
warm-up then cosine decay, as the paper's OneCycle schedule) on 1,000 3 x 3 mazes; the comparison is the
exact-path rate on 300 unseen mazes (next-token: greedy decoding, which equals teacher-forced exact match;
MLM-U: the paper's evaluation, the answer filled left to right, one token per forward pass). Each objective
runs at its best learning rate of {1.5e-3, 3e-3, 6e-3}.

At the sizes a CPU test affords, the claim does not reproduce with this 2-layer bidirectional trunk (the paper
trains a 4- to 20-layer encoder-decoder for 300 epochs of 40,000 mazes at 3 x 3). This test measured
next-token 0.533, MLM-U 0.343 (113 s on one core). The same loop with its own mask generator, on 300 unseen
mazes (seed 0 unless noted, d_model 64, batch 32, MLM-U with the padding after <PATH_END> hidden and unscored
unless noted; MLM-U columns: one pass / left to right / confident-first):

    grid  mazes  steps  layers  lr      schedule  next-token  MLM-U
    3     1,000  1,000  2       3e-3    constant  0.397       0.137 / 0.087 / 0.323  (padding scored)
    3     1,000  1,000  2       3e-3    constant  -           0.193 / 0.287 / 0.137
    3     1,000  1,000  2       3e-3    cosine    0.490       0.413 / 0.433 / 0.060
    3     1,000  1,000  2       3e-3    cosine    -           0.123 / 0.113 / 0.010  (padding hidden, scored)
    3     1,000  1,000  2       1.5e-3  cosine    0.533       0.293 / 0.407 / 0.080
    3     1,000  1,000  2       (*)     cosine    0.500       0.223 / 0.287 / 0.000  (seed 1)
    3     1,000  1,000  2       6e-3    cosine    0.413       0.260 / 0.267 / 0.037
    3     1,000  1,000  4       2e-3    cosine    0.533       0.377 / 0.350 / 0.077
    3     1,000  2,000  2       3e-3    cosine    0.523       0.397 / 0.440 / 0.183
    3       300  1,500  2       3e-3    cosine    0.303       0.163 / 0.210 / 0.057
    3       300  1,500  2       3e-3    cosine    0.267       0.060 / 0.097 / 0.017  (dropout 0.1, wd 0.1)
    3       100  1,500  2       3e-3    cosine    0.153       0.060 / 0.053 / 0.033
    3     1,000  1,000  2 (d 128) 2e-3  cosine    0.417       0.350 / 0.360 / 0.087
    4     1,000  1,000  2       3e-3    cosine    0.130       0.057 / 0.040 / 0.013

(*) next-token 1.5e-3, MLM-U 3e-3, as in the test. MLM-U varies with the masks drawn (0.29-0.44 left to right
at the test's setting across mask generators and seeds), next-token much less (0.50-0.53).

Longer runs, more mazes and the paper's encoder-decoder (the test's learning rates and schedule, batch 32,
d_model 64, MLM-U read left to right; "train" is the rate on 300 of the training mazes):

    grid  mazes   steps  model                 next-token (train)  MLM-U (train)
    3      1,000  8,000  2 layers              0.587 (1.000)       0.530 (0.927)
    3     40,000  4,000  2 layers              0.947 (0.977)       0.597 (0.617)
    3     40,000  4,000  PAST 2 + 2 (**)       -                   0.540 (0.547)
    5     20,000  3,000  2 layers              0.273 (0.233)       0.050 (0.023)

(**) the paper's PAST layout: an encoder that attends to the visible tokens only (hidden ones are left out of
attention, not replaced by a mask token) and a decoder of one learned query per position, rotary, cross-attending
to the encoder's last layer; a prototype outside mmseq, measured to see whether the layout closes the gap.

With 1,000 mazes both objectives memorise them (train rates near 1) and generalise about equally; with 40,000
mazes (about 3 passes in 4,000 steps of 32) next-token training learns the task and MLM-U does not, in either layout.

Hiding the padding and a decaying learning rate closed most of the gap (MLM-U 0.19 -> 0.43), but next-token
training stays ahead everywhere affordable: with few mazes both memorise them and next-token generalises
better; with more, MLM-U's harder objective is still underfit after a few thousand steps. Split by path
length (seed 0, the test's learning rates), MLM-U leads on short paths and fails the long ones, the opposite of
the paper's finding at scale: paths of <= 3 cells next-token 0.728 / MLM-U 0.757 (136 mazes), 4-5 cells
0.442 / 0.260 (104), >= 6 cells 0.250 / 0.000 (60). So the test is
expected to fail (strict: it reports when MLM-U starts to win, and the mark must go).
"""

from __future__ import annotations

import math

import pytest
import torch

from mmseq.synthetic.data import IGNORE
from mmseq.synthetic.mazes import MazeModule, make_mazes, maze_vocab_size
from mmseq.synthetic.model import SequenceLM

GRID, NUM_TRAIN, NUM_TEST = 3, 1000, 300
STEPS, BATCH, WARMUP = 1000, 32, 50
LR = {"next-token": 1.5e-3, "mlm-u": 3e-3}  # each objective's best of {1.5e-3, 3e-3, 6e-3}
MARGIN = 0.1  # 2.5 standard errors of the difference of two rates near 0.45 over 300 mazes each
TRUNK = {"d_model": 64, "n_layers": 2, "mlp_ratio": 2, "mixer": {"name": "attention", "n_heads": 4}}


def _lr_factor(step: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def _exact_after_training(objective: str, train: dict, test: dict) -> float:
    torch.manual_seed(0)
    model = SequenceLM(maze_vocab_size(GRID), causal=objective == "next-token", **TRUNK)
    module = MazeModule(model, {"lr": LR[objective]}, STEPS, GRID, objective, decode="left-to-right")
    opt = torch.optim.AdamW(model.parameters(), lr=LR[objective], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor)
    order = torch.Generator().manual_seed(0)  # the same batches for both objectives
    for _ in range(STEPS):
        idx = torch.randint(NUM_TRAIN, (BATCH,), generator=order)
        batch = (train["inputs"][idx], train["labels"][idx])
        loss = module.loss(module.forward_batch(batch, "train"), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        outputs = module.forward_batch((test["inputs"], test["labels"]), "test")
    preds = outputs[2] if len(outputs) > 2 else outputs[0].argmax(-1)
    targets = outputs[1]
    return ((preds == targets) | (targets == IGNORE)).all(1).float().mean().item()


@pytest.mark.slow  # about 2 minutes on one core
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
