"""LaCache against attention sinks + a recent window on passkey retrieval, at equal KV-cache memory.

Trains a small causal-attention passkey model through the runner (or reuses ``--run-dir`` when it already holds
a trained model), then decodes a held-out test set token by token through ``model.trunk.step``, the path that
a KV-cache policy bounds: the prompt is streamed up to the QUERY marker and the digits are generated greedily,
each fed back in. Every policy gets the same per-layer budget (a fraction of the training length), so the
KV entries summed over layers are equal; the measured peak cache per layer is printed beside the scores.

Scores: passkey accuracy (all digits right) and digit accuracy, overall and per depth of the hidden key
(cells "passkey / digit"). A ``full (forward)`` row scores the parallel forward with teacher forcing, as a check
on the stepping path. With ``--long-factor F`` the same model is also scored at F times the training length
(same budgets). With ``--reposition`` each bounded policy is also scored with its kept keys re-rotated at their
indices in the cache (``reposition=True``: no query-key distance exceeds the budget), as extra rows
"... (re-rotated)".

Each split of the passkey task repeats its own filler sentence, and this small model does not carry passkey
retrieval over to a new filler; so by default the held-out set keeps the test split's passkeys and depths in the
training filler (``--filler train``), and the model is the final step's (``--weights last``), not the checkpoint
with the best val/acc, which is measured in the val split's filler.

    python benchmarks/lacache_passkey.py --run-dir runs/lacache-passkey
    python benchmarks/lacache_passkey.py --run-dir runs/lacache-passkey-4l --layers 4 --reposition
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from report import render, setup_device, write_markdown  # noqa: E402

from mmseq.mixers.kv_policies import FullCache, LaCache, SinkWindowCache, set_cache_policy  # noqa: E402
from mmseq.runner.checkpoint import safe_torch_load  # noqa: E402
from mmseq.runner.config import read_yaml  # noqa: E402
from mmseq.runner.pretrained import from_pretrained  # noqa: E402
from mmseq.runner.task import load_task  # noqa: E402
from mmseq.runner.train import train  # noqa: E402
from mmseq.synthetic.data import FILLER_START, make_passkey  # noqa: E402
from mmseq.synthetic.model import SequenceLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/synthetic/passkey_attention.yaml"
# The shipped config (length 256, 600 steps) does not learn the task on a 2-core CPU; at length 128 it does.
TRAIN_OVERRIDES = ["data.seq_len=128", "trainer.max_steps=1000", "trainer.val_check_interval=250",
                   "trainer.checkpoint_every_n_steps=250"]


def trained_model(config: Path, overrides: list[str], run_dir: Path, weights: str) -> tuple[SequenceLM, dict]:
    """The run's model and its resolved config, training it first unless ``run_dir/model`` exists.

    ``weights="best"``: the exported model (the checkpoint with the best val/acc); ``"last"``: the final step's."""
    if not (run_dir / "model").is_dir():
        start = time.perf_counter()
        metrics = train(config, overrides or TRAIN_OVERRIDES, run_dir=run_dir)
        print(f"trained {run_dir} in {time.perf_counter() - start:.0f} s: val {metrics['val']}", flush=True)
    elif overrides:
        print(f"{run_dir} already holds a trained model; the overrides {overrides} are not applied", flush=True)
    model = from_pretrained(run_dir / "model", expected=SequenceLM)
    if weights == "last":
        ckpt = safe_torch_load(run_dir / "checkpoints/last.ckpt")
        model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
                               if k.startswith("model.")})
        print(f"weights of step {ckpt.get('global_step')} (checkpoints/last.ckpt)", flush=True)
    return model, read_yaml(run_dir / "config.yaml")


def test_split(run_config: dict, seq_len: int, num: int, filler: str) -> dict[str, torch.Tensor]:
    """The run's held-out test split (its seed, depths and passkeys) at ``seq_len``, ``num`` sequences.

    Each split of the passkey task repeats its own filler sentence. ``filler="train"`` swaps the test split's
    filler for the training split's, so only the passkeys and depths are new to the model."""
    task = load_task(run_config, [f"data.seq_len={seq_len}", f"data.num_test={num}"])
    data = task.make_split("test")
    if filler == "train":
        d = task.cfg.data
        seed = task.split_seed("train")
        # Filler at every position: before the key when it sits at the end, after it when it sits at the start.
        end, start = (make_passkey(1, seq_len, d.n_digits, d.filler_vocab, seed, [x])["inputs"][0] for x in (1, 0))
        span = seq_len - (d.n_digits + 1) - (d.n_digits + 2)
        sentence = torch.cat([end[:span], start[span:]])
        inputs = data["inputs"]
        data["inputs"] = torch.where(inputs >= FILLER_START, sentence.expand_as(inputs), inputs)
    return data


@torch.no_grad()
def decode(model: SequenceLM, inputs: torch.Tensor, n_digits: int, batch_size: int) -> tuple[torch.Tensor, list]:
    """Stream inputs [N, L] through QUERY one token at a time, then generate ``n_digits`` greedily.

    -> (generated digits [N, n_digits], peak KV entries per attention layer over the whole decode)."""
    N, L = inputs.shape
    body = L - (n_digits + 1)  # index of QUERY; the digits follow it
    out, peak = [], None
    for lo in range(0, N, batch_size):
        x = inputs[lo:lo + batch_size]
        state = model.trunk.init_state(x.shape[0])
        peak = peak or [0] * len(state)
        gen = []
        tok = x[:, 0]
        for t in range(body + n_digits):
            y, state = model.trunk.step(model.embed(tok), state)
            peak = [max(p, s.k.shape[2]) for p, s in zip(peak, state)]
            if t >= body:
                tok = model.head(y).argmax(-1)
                gen.append(tok)
            else:
                tok = x[:, t + 1]
        out.append(torch.stack(gen, dim=1))
    return torch.cat(out), peak


@torch.no_grad()
def forward_preds(model: SequenceLM, inputs: torch.Tensor, n_digits: int, batch_size: int) -> torch.Tensor:
    """Teacher-forced predictions of the digits from the parallel forward: [N, n_digits]."""
    body = inputs.shape[1] - (n_digits + 1)
    preds = [model(x).argmax(-1)[:, body:body + n_digits] for x in inputs.split(batch_size)]
    return torch.cat(preds)


def scores(preds: torch.Tensor, digits: torch.Tensor, depth: torch.Tensor, depths: list[float]) -> dict:
    right = preds == digits
    exact = right.all(dim=1).float()
    row = {"all": exact.mean().item(), "digits": right.float().mean().item()}
    for d in depths:
        sel = (depth - d).abs() < 1e-6
        row[d] = f"{exact[sel].mean().item():.3f} / {right[sel].float().mean().item():.3f}"
    return row


def policies(seq_len: int, train_len: int, fractions: list[float], sinks: int, span: int,
             reposition: bool = False) -> list[tuple[str, str, object]]:
    """(name, budget label, policy) for the full cache and both bounded policies at each budget, a fraction of
    the training length (labelled with its share of ``seq_len``); with ``reposition`` each bounded policy also
    re-rotating its kept keys at their cache indices."""
    out = [("full", f"{seq_len} (100%)", FullCache())]
    for f in fractions:
        b = round(f * train_len)
        label = f"{b} ({b / seq_len:.1%})".replace(".0%", "%")
        for rerotate in (False, True) if reposition else (False,):
            tag = " (re-rotated)" if rerotate else ""
            out.append((f"sink + window{tag}", label, SinkWindowCache(budget=b, sinks=sinks, reposition=rerotate)))
            out.append((f"LaCache{tag}", label, LaCache(budget=b, sinks=sinks, span=span, reposition=rerotate)))
    return out


def run_length(model: SequenceLM, run_config: dict, seq_len: int, train_len: int, args) -> str:
    data = test_split(run_config, seq_len, args.num_test, args.filler)
    n = int(run_config["data"]["n_digits"])
    inputs, depth = data["inputs"], data["depth"]
    digits = inputs[:, -n:]
    depths = sorted({round(float(d), 6) for d in depth})
    head = ["policy", "budget / layer", "peak entries per layer", "sum", "passkey acc", "digit acc",
            *[f"depth {d:g}" for d in depths], "s"]
    body = []
    if not args.skip_forward:
        set_cache_policy(model.trunk, None)
        start = time.perf_counter()
        r = scores(forward_preds(model, inputs, n, args.batch_size), digits, depth, depths)
        body.append(["full (forward)", "-", "-", "-", f"{r['all']:.3f}", f"{r['digits']:.3f}",
                     *[r[d] for d in depths], f"{time.perf_counter() - start:.1f}"])
    for name, label, policy in policies(seq_len, train_len, args.budgets, args.sinks, args.span,
                                        args.reposition):
        set_cache_policy(model.trunk, policy)
        start = time.perf_counter()
        preds, peak = decode(model, inputs, n, args.batch_size)
        r = scores(preds, digits, depth, depths)
        body.append([name, label, " / ".join(map(str, peak)), str(sum(peak)), f"{r['all']:.3f}",
                     f"{r['digits']:.3f}", *[r[d] for d in depths], f"{time.perf_counter() - start:.1f}"])
        print(" | ".join(body[-1]), flush=True)
    set_cache_policy(model.trunk, None)
    numeric = {"sum", "passkey acc", "digit acc", "s", *[f"depth {d:g}" for d in depths]}
    title = (f"Passkey retrieval at length {seq_len} (trained at {train_len}), {inputs.shape[0]} held-out "
             f"sequences ({args.filler} filler), {n} digits, greedy token-by-token decoding")
    return f"{title}:\n\n{render(head, body, numeric)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=CONFIG, help="passkey config to train (default: %(default)s)")
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs/lacache-passkey",
                   help="run folder: reused when it holds a trained model, else trained into")
    p.add_argument("overrides", nargs="*", help="key=value overrides for training (default: "
                   + " ".join(TRAIN_OVERRIDES) + ")")
    p.add_argument("--layers", type=int, default=None,
                   help="attention layers of the model to train (adds model.n_layers=N to the overrides; the "
                        "config's own is 2)")
    p.add_argument("--weights", choices=("last", "best"), default="last",
                   help="the final step's weights (default) or the exported best-val/acc model")
    p.add_argument("--num-test", type=int, default=500, help="held-out sequences (cycling over the test depths)")
    p.add_argument("--filler", choices=("train", "test"), default="train",
                   help="filler sentence of the held-out set: the training split's (default: new passkeys and "
                        "depths in the filler the model learned) or the test split's own")
    p.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.125, 0.25, 0.5],
                   help="per-layer KV budgets as fractions of the training length (default 0.125,0.25,0.5)")
    p.add_argument("--sinks", type=int, default=4, help="leading tokens both policies keep (default 4)")
    p.add_argument("--span", type=int, default=None,
                   help="LaCache span (default n_layers // 2, at least 1; must be < n_layers)")
    p.add_argument("--reposition", action="store_true",
                   help="also score each bounded policy with its kept keys re-rotated at their cache indices")
    p.add_argument("--long-factor", type=float, default=2.0, help="also score at this multiple of the training "
                   "length (0: skip; default 2)")
    p.add_argument("--batch-size", type=int, default=250, help="sequences decoded together (default 250)")
    p.add_argument("--skip-forward", action="store_true", help="leave out the parallel-forward check row")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--markdown", type=Path, default=None, help="append the tables to this markdown file")
    args = p.parse_args(argv)
    device = setup_device("cpu", args.threads)
    torch.manual_seed(0)

    overrides = list(args.overrides)
    if args.layers is not None:
        overrides = (overrides or TRAIN_OVERRIDES) + [f"model.n_layers={args.layers}"]
    model, run_config = trained_model(args.config, overrides, args.run_dir, args.weights)
    n_layers = len(model.trunk.blocks)
    if args.layers is not None and args.layers != n_layers:
        print(f"warning: --layers {args.layers}, but the model in {args.run_dir} has {n_layers}", flush=True)
    if args.span is None:
        args.span = max(1, n_layers // 2)
    train_len = int(run_config["data"]["seq_len"])
    print(f"model: {n_layers} attention layers, d_model {model.embed.embedding_dim}, trained at length "
          f"{train_len}; LaCache span {args.span}, sinks {args.sinks} for both policies", flush=True)
    tables = [run_length(model, run_config, train_len, train_len, args)]
    if args.long_factor > 0:
        tables.append(run_length(model, run_config, round(args.long_factor * train_len), train_len, args))
    text = "\n\n".join(tables)
    print(text)
    if args.markdown is not None:
        write_markdown(args.markdown, text, device, title="LaCache vs sink + window on passkey (CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
