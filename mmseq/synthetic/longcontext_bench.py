"""``mmseq bench longcontext``: the long-context suite's mixer x task x length grid under one training budget.

    mmseq bench longcontext --mixers attention,mamba --tasks mqar,copy --lengths 64,128 --steps 300 --out DIR

Each cell trains a small model of one mixer on one task at one length through the common runner
(``mmseq.runner.train.train``, the same path as ``mmseq train``), then scores it on the task's held-out test
split. Every cell has the same trunk (``--d-model``, ``--n-layers``, no MLP, the mixer's constructor defaults
with ``l_max`` set to the length where a mixer has one), batch, optimizer, seed and budget: ``--steps N``
optimizer steps, or ``--tokens N`` training tokens (steps = ceil(N / (batch * tokens per sequence))). Every
training sequence is fresh (``num_train = steps * batch``).

A length is the number of tokens the model reads. Each task turns it into its own size (``SUITE`` below):
the largest instance whose sequence fits in that many tokens (a 3 x 3 maze at 64, COPY of 31 tokens at 64).
A length no instance fits is refused before anything runs.

DIR holds ``grid.json`` (the arguments; a later call must give the same ones), ``configs/<cell>.yaml`` and
``runs/<cell>/`` (each cell's config and run folder), ``cells/<cell>.json`` (a finished cell, written
atomically), ``logs/<cell>.log`` (what the runner printed), and the results rebuilt after every cell:
``results.csv``, ``results.md`` (rows mixers, columns task@length) and ``heatmap.png`` (one panel per task).
A killed grid, run again with the same arguments, skips the finished cells and continues the interrupted one
from its last checkpoint. A cell that fails is reported and left unfinished, so the next call retries it.

Nothing heavy is imported at module level: ``mmseq --help`` imports this module through the suite's CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmseq.errors import UserError
from mmseq.registry import unknown_name_message

# The trunk and optimizer every cell shares (the suite's configs: configs/synthetic/mqar_attention.yaml).
LR = 3.0e-3
WARMUP_STEPS = 20
CHECKPOINTS_PER_CELL = 4  # checkpoints a cell writes, so an interrupted one resumes near where it stopped

GRID_FILE = "grid.json"
CSV_COLUMNS = ("mixer", "task", "length", "seq_tokens", "metric", "score", "params", "steps", "batch_size",
               "tokens_seen", "train_s", "wall_s", "resumed")


# ----------------------------------------------------------------------------------------------------------
# the suite: how each task takes a length
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteTask:
    """A runner task in the grid: fixed ``data`` options, and ``size(length) -> (data options, tokens per
    sequence)`` giving the largest instance that fits in ``length`` tokens (ValueError when none does)."""

    name: str
    size: Callable[[int], tuple[dict[str, Any], int]]
    data: dict[str, Any] = field(default_factory=dict)
    metric: str = "acc"  # the test metric the grid reports
    what: str = ""  # what the length sets, for --help and the docs


def _whole(length: int) -> tuple[dict[str, Any], int]:
    return {"seq_len": length}, length


def _copy(length: int) -> tuple[dict[str, Any], int]:
    n = (length - 1) // 2  # x_1..x_n SEP x_1..x_n
    if n < 1:
        raise ValueError("COPY needs at least 3 tokens (a 1-token string, SEP, its copy)")
    return {"copy_len": n}, 2 * n + 1


SELECTIVE_COPY_TOKENS = 8


def _selective_copy(length: int) -> tuple[dict[str, Any], int]:
    k = SELECTIVE_COPY_TOKENS  # blanks with k data tokens, SEP, the k tokens
    if length - 1 - k < k:
        raise ValueError(f"selective copying of {k} tokens needs at least {2 * k + 1} tokens")
    return {"seq_len": length - 1 - k, "num_tokens": k}, length


JOINT_RECALL_CONTEXTS = 4


def _joint_recall(length: int) -> tuple[dict[str, Any], int]:
    from .recall import joint_recall_length

    c = JOINT_RECALL_CONTEXTS
    keys = 0
    while joint_recall_length(c, keys + 1, c * (keys + 1)) <= length:
        keys += 1
    if keys == 0:
        raise ValueError(f"joint recall over {c} contexts needs at least {joint_recall_length(c, 1, c)} tokens")
    return {"num_keys": keys, "num_queries": c * keys}, joint_recall_length(c, keys, c * keys)


def _maze(length: int) -> tuple[dict[str, Any], int]:
    from .mazes import maze_length

    grid = 1
    while maze_length(grid + 1) <= length:
        grid += 1
    if grid < 2:
        raise ValueError(f"the smallest maze (2 x 2) takes {maze_length(2)} tokens")
    return {"grid": grid}, maze_length(grid)


def _dna_classify(length: int) -> tuple[dict[str, Any], int]:
    from .dna import DEFAULT_MOTIFS

    width = max(len(m) for m in DEFAULT_MOTIFS.values())
    if length < width:
        raise ValueError(f"a window must hold a whole motif ({width} bp)")
    return {"seq_len": length}, length


SUITE: dict[str, SuiteTask] = {t.name: t for t in (
    SuiteTask("mqar", _whole, {"vocab_size": 128, "num_kv_pairs": 8}, what="data.seq_len (8 key-value pairs)"),
    SuiteTask("passkey", _whole, {"n_digits": 5, "filler_vocab": 16}, what="data.seq_len (5 digits)"),
    SuiteTask("joint-recall", _joint_recall, {"num_contexts": JOINT_RECALL_CONTEXTS, "num_values": 16},
              what="data.num_keys, with num_queries asking for the whole table"),
    SuiteTask("copy", _copy, {"vocab_size": 16}, what="data.copy_len = (length - 1) // 2"),
    SuiteTask("selective-copy", _selective_copy, {"vocab_size": 16},
              what=f"data.seq_len = length - {SELECTIVE_COPY_TOKENS + 1} ({SELECTIVE_COPY_TOKENS} data tokens)"),
    SuiteTask("maze", _maze, {}, metric="exact", what="data.grid, the largest maze that fits (exact path scored)"),
    SuiteTask("dna-pretrain", _whole, {}, what="data.seq_len (window of the genome)"),
    SuiteTask("dna-classify", _dna_classify, {}, what="data.seq_len (window of the genome)"),
)}
DNA_TASKS = ("dna-pretrain", "dna-classify")


def _unknown(kind: str, name: str, names: list[str]) -> str:
    return unknown_name_message(kind, name, names, choose="choose from")


# ----------------------------------------------------------------------------------------------------------
# the grid's arguments
# ----------------------------------------------------------------------------------------------------------


@dataclass
class GridSpec:
    """Everything that decides a grid's results (recorded in DIR/grid.json)."""

    mixers: list[str]
    tasks: list[str]
    lengths: list[int]
    steps: int | None = None
    tokens: int | None = None
    seed: int = 0
    d_model: int = 64
    n_layers: int = 2
    batch_size: int = 32
    num_test: int = 500
    device: str = "cpu"
    fasta: str | None = None  # DNA tasks: a FASTA file or genome folder; None makes the built-in genome in DIR

    def option_differences(self, other: GridSpec) -> list[str]:
        """The options where ``other`` differs (mixer, task and length lists compare as sets)."""
        out = []
        for key, mine in asdict(self).items():
            theirs = getattr(other, key)
            same = set(mine) == set(theirs) if isinstance(mine, list) else mine == theirs
            if not same:
                out.append(f"--{key.replace('_', '-')} {_shown(theirs)} (this grid has {_shown(mine)})")
        return out

    def command(self, out: Path) -> str:
        parts = ["mmseq", "bench", "longcontext", "--mixers", ",".join(self.mixers), "--tasks", ",".join(self.tasks),
                 "--lengths", ",".join(map(str, self.lengths))]
        parts += ["--steps", str(self.steps)] if self.steps is not None else ["--tokens", str(self.tokens)]
        parts += ["--seed", str(self.seed), "--d-model", str(self.d_model), "--n-layers", str(self.n_layers),
                  "--batch-size", str(self.batch_size), "--num-test", str(self.num_test), "--device", self.device]
        if self.fasta:
            parts += ["--fasta", self.fasta]
        return shlex.join([*parts, "--out", str(out)])

    def budget(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.tokens} training tokens"


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


@dataclass
class Cell:
    """One (mixer, task, length) of the grid, with its config once planned."""

    mixer: str
    task: str
    length: int
    raw: dict = field(default_factory=dict)  # the run config
    seq_tokens: int = 0
    steps: int = 0
    params: int = 0

    @property
    def id(self) -> str:
        return f"{self.mixer}_{self.task}_L{self.length}"

    @property
    def column(self) -> str:
        return f"{self.task}@{self.length}"


def _names(text: str, option: str) -> list[str]:
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not names:
        raise UserError(f"{option} needs at least one name, got {text!r}")
    return names


def _positive(text: str | int, option: str) -> int:
    from mmseq.commands import positive_int

    try:
        return positive_int(str(text))
    except argparse.ArgumentTypeError as e:
        raise UserError(f"{option} {e}") from None


def spec_from_args(args: argparse.Namespace) -> GridSpec:
    """Check the command line (names, numbers, budget) and return the grid it asks for."""
    import torch

    from mmseq.mixers import list_mixers

    mixers = list_mixers() if args.mixers.strip() == "all" else _names(args.mixers, "--mixers")
    for name in mixers:
        if name not in list_mixers():
            raise UserError(f"--mixers: {_unknown('mixer', name, list_mixers())}")
    tasks = _names(args.tasks, "--tasks")
    for name in tasks:
        if name not in SUITE:
            raise UserError(f"--tasks: {_unknown('long-context task', name, list(SUITE))}")
    lengths = list(dict.fromkeys(_positive(x, "--lengths: each length") for x in _names(args.lengths, "--lengths")))
    if (args.steps is None) == (args.tokens is None):
        raise UserError("give the training budget of each cell as either --steps N or --tokens N"
                        + (", not both" if args.steps is not None else ""))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA device here; use --device cpu")
    try:
        seed = int(args.seed)
    except ValueError:
        raise UserError(f"--seed must be a whole number, got {args.seed!r}") from None
    fasta = None
    if args.fasta:
        if not set(tasks) & set(DNA_TASKS):
            raise UserError(f"--fasta is for the DNA tasks ({', '.join(DNA_TASKS)}), none of which is in --tasks")
        if not Path(args.fasta).exists():
            raise UserError(f"--fasta {args.fasta}: no such file or folder")
        fasta = str(Path(args.fasta).resolve())
    return GridSpec(
        mixers=mixers, tasks=tasks, lengths=lengths,
        steps=None if args.steps is None else _positive(args.steps, "--steps"),
        tokens=None if args.tokens is None else _positive(args.tokens, "--tokens"),
        seed=seed, d_model=_positive(args.d_model, "--d-model"),
        n_layers=_positive(args.n_layers, "--n-layers"), batch_size=_positive(args.batch_size, "--batch-size"),
        num_test=_positive(args.num_test, "--num-test"), device=device, fasta=fasta)


# ----------------------------------------------------------------------------------------------------------
# planning: one validated run config per cell
# ----------------------------------------------------------------------------------------------------------


def sizes(spec: GridSpec) -> dict[tuple[str, int], tuple[dict[str, Any], int]]:
    """(task, length) -> (data options, tokens per sequence); a length a task cannot take is a UserError."""
    out = {}
    for task in spec.tasks:
        for length in spec.lengths:
            try:
                out[task, length] = SUITE[task].size(length)
            except ValueError as e:
                raise UserError(f"--lengths: task {task} cannot take length {length}: {e}") from None
    return out


def cell_config(spec: GridSpec, cell: Cell, data: dict[str, Any], seq_tokens: int, genome: Path | None) -> dict:
    """The run config of one cell (what ``mmseq train`` would read from a YAML file)."""
    from mmseq.mixers.base import mixer_hparams

    steps = spec.steps if spec.steps is not None else math.ceil(spec.tokens / (spec.batch_size * seq_tokens))
    mixer: dict[str, Any] = {"name": cell.mixer}
    if "l_max" in mixer_hparams(cell.mixer):
        mixer["l_max"] = seq_tokens
    data = {**SUITE[cell.task].data, **data, "num_train": steps * spec.batch_size, "num_val": spec.num_test,
            "num_test": spec.num_test, "batch_size": spec.batch_size}
    if cell.task in DNA_TASKS:
        data["fasta"] = spec.fasta or str(genome)
    every = max(1, steps // CHECKPOINTS_PER_CELL)
    return {
        "task": cell.task,
        "seed": spec.seed,
        "data": data,
        "model": {"d_model": spec.d_model, "n_layers": spec.n_layers, "mlp_ratio": 0, "mixer": mixer},
        "optim": {"lr": LR, "warmup_steps": min(WARMUP_STEPS, steps // 10)},
        "trainer": {"max_steps": steps, "val_check_interval": steps, "checkpoint_every_n_steps": every,
                    "log_every_n_steps": max(1, min(10, steps)), "enable_progress_bar": False,
                    "accelerator": "gpu" if spec.device == "cuda" else "cpu"},
    }


def plan(spec: GridSpec, out: Path) -> list[Cell]:
    """Every cell with its validated run config, steps and parameter count; a config the runner refuses is a
    UserError naming the cell. Writes nothing except the built-in genome when a DNA task needs it."""
    from mmseq.runner.task import load_task
    from mmseq.runner.train import build_model

    table = sizes(spec)
    genome = None
    if set(spec.tasks) & set(DNA_TASKS) and not spec.fasta:
        genome = _builtin_genome(out, spec.seed)
    cells = []
    for task in spec.tasks:
        for length in spec.lengths:
            data, seq_tokens = table[task, length]
            for mixer in spec.mixers:
                cell = Cell(mixer, task, length, seq_tokens=seq_tokens)
                cell.raw = cell_config(spec, cell, data, seq_tokens, genome)
                cell.steps = cell.raw["trainer"]["max_steps"]
                try:
                    model = build_model(load_task(cell.raw, source=f"cell {cell.id}"))
                except UserError as e:
                    if str(e).startswith(("config section 'data'", "config key 'data.")):
                        raise UserError(f"--lengths: task {task} cannot take length {length}: {e}") from None
                    raise UserError(f"mixer {mixer} on {task} at length {length}: {e}") from None
                cell.params = sum(p.numel() for p in model.parameters())
                cells.append(cell)
    return cells


def _builtin_genome(out: Path, seed: int) -> Path:
    """DIR/dna-genome, made once (deterministic from the seed) for the DNA tasks."""
    from .dna import GENOME_FILE, make_genome

    folder = out / "dna-genome"
    if not (folder / GENOME_FILE).is_file():
        import shutil

        tmp = out / ".dna-genome.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_genome(tmp, seed=seed)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


# ----------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------


def open_grid(spec: GridSpec, out: Path) -> None:
    """Refuse an ``out`` that holds another grid, or that is something else; nothing is written here."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    recorded = out / GRID_FILE
    if recorded.is_file():
        try:
            old = GridSpec(**json.loads(recorded.read_text()))
        except (ValueError, TypeError) as e:
            raise UserError(f"--out {out}: {GRID_FILE} is unreadable ({e}); give a new --out") from None
        diff = old.option_differences(spec)
        if diff:
            raise UserError(f"--out {out} holds a grid made with other arguments: {'; '.join(diff)}. Give the "
                            "same arguments to continue it, or a new --out")
    elif out.is_dir() and any(out.iterdir()) and not (out / "dna-genome").is_dir():
        raise UserError(f"--out {out} is not empty and holds no grid ({GRID_FILE}); give a new or empty folder")


def run_grid(spec: GridSpec, out: Path) -> int:
    """Run every unfinished cell of the grid in ``out``; returns 0, or 1 when some cell failed."""
    from tqdm import tqdm

    from mmseq.runner.pretrained import atomic_write

    open_grid(spec, out)
    cells = plan(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / GRID_FILE).is_file():
        atomic_write(out / GRID_FILE, lambda tmp: Path(tmp).write_text(json.dumps(asdict(spec), indent=2) + "\n"))
    for sub in ("configs", "runs", "cells", "logs"):
        (out / sub).mkdir(exist_ok=True)
    done = {c.id for c in cells if (out / "cells" / f"{c.id}.json").is_file()}
    write_results(spec, cells, out)
    failed = []
    with tqdm(total=len(cells), initial=len(done), desc="longcontext", unit="cell", dynamic_ncols=True) as bar:
        for cell in cells:
            if cell.id in done:
                continue
            bar.set_postfix_str(f"{cell.mixer} {cell.column}")
            try:
                row = run_cell(cell, out)
            except Exception as e:  # one failing cell does not stop the grid; the next call retries it
                failed.append(cell)
                bar.write(f"{cell.mixer} {cell.column}: failed: {type(e).__name__}: {_first_line(e)} "
                          f"(log: {out / 'logs' / (cell.id + '.log')})")
                continue
            atomic_write(out / "cells" / f"{cell.id}.json", lambda tmp, r=row: Path(tmp).write_text(json.dumps(r)))
            write_results(spec, cells, out)
            bar.write(f"{cell.mixer} {cell.column}: {row['metric']} {row['score']} ({row['wall_s']} s)")
            bar.update(1)
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'heatmap.png'}")
    if failed:
        print(f"{len(failed)} of {len(cells)} cells failed ({', '.join(c.id for c in failed)}); run the same "
              "command again to retry them")
        return 1
    return 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def run_cell(cell: Cell, out: Path) -> dict[str, Any]:
    """Train and score one cell through the runner; continues the cell's run folder from its last checkpoint
    when an earlier call was interrupted. Returns the cell's row of results.csv."""
    import contextlib
    import logging
    import shutil
    import time
    import traceback
    import warnings

    import yaml

    from mmseq.runner import train as runner

    config = out / "configs" / f"{cell.id}.yaml"
    config.write_text(yaml.safe_dump(cell.raw, sort_keys=False))
    run_dir = out / "runs" / cell.id
    resumable = (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    start = time.perf_counter()
    with open(out / "logs" / f"{cell.id}.log", "a") as log, contextlib.redirect_stdout(log), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handler = logging.StreamHandler(log)
        lightning = logging.getLogger("lightning")
        lightning.addHandler(handler)
        propagate, lightning.propagate = lightning.propagate, False
        try:
            metrics = None
            if resumable:
                try:
                    metrics = runner.train(overrides=[f"trainer.max_steps={cell.steps}"], resume=run_dir)
                except Exception:  # a checkpoint that cannot be continued: start the cell over
                    traceback.print_exc(file=log)
            if metrics is None:
                resumable = False
                shutil.rmtree(run_dir, ignore_errors=True)
                metrics = runner.train(config, run_dir=run_dir)
        except Exception:
            traceback.print_exc(file=log)
            raise
        finally:
            lightning.removeHandler(handler)
            lightning.propagate = propagate
    wall = time.perf_counter() - start
    metric = f"test/{cell_metric(cell.task)}"
    if metric not in metrics.get("test", {}):
        raise RuntimeError(f"the run reported no {metric} (it reported {sorted(metrics.get('test', {}))})")
    steps = int(metrics["global_step"])
    batch = int(cell.raw["data"]["batch_size"])
    return {"mixer": cell.mixer, "task": cell.task, "length": cell.length, "seq_tokens": cell.seq_tokens,
            "metric": metric, "score": f"{metrics['test'][metric]:.4f}", "params": cell.params, "steps": steps,
            "batch_size": batch, "tokens_seen": steps * batch * cell.seq_tokens,
            "train_s": f"{metrics.get('train_time_s', float('nan')):.1f}", "wall_s": f"{wall:.1f}",
            "resumed": int(resumable)}


def cell_metric(task: str) -> str:
    return SUITE[task].metric


# ----------------------------------------------------------------------------------------------------------
# results: CSV, markdown table, heatmap
# ----------------------------------------------------------------------------------------------------------


def finished_rows(cells: list[Cell], out: Path) -> list[dict[str, Any]]:
    """The rows of the finished cells, in grid order."""
    rows = []
    for cell in cells:
        path = out / "cells" / f"{cell.id}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    return rows


def write_results(spec: GridSpec, cells: list[Cell], out: Path) -> None:
    """Rebuild results.csv, results.md and heatmap.png from the finished cells (each file atomically)."""
    import csv
    import io

    from mmseq.runner.pretrained import atomic_write

    rows = finished_rows(cells, out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in CSV_COLUMNS} for row in rows)
    atomic_write(out / "results.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    text = markdown(spec, rows, out)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text))
    atomic_write(out / "heatmap.png", lambda tmp: heatmap(spec, rows, Path(tmp)))


def markdown(spec: GridSpec, rows: list[dict[str, Any]], out: Path) -> str:
    """A table with a row per mixer and a column per task@length; each cell the task's test metric."""
    score = {(r["mixer"], r["task"], int(r["length"])): r["score"] for r in rows}
    columns = [(t, n) for t in spec.tasks for n in spec.lengths]
    header = ["mixer", *(f"{t}@{n}" for t, n in columns)]
    body = [[m, *(score.get((m, t, n), "-") for t, n in columns)] for m in spec.mixers]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    metrics = ["test/acc"] + [f"{t}: test/{cell_metric(t)}" for t in spec.tasks if cell_metric(t) != "acc"]
    total = len(spec.mixers) * len(columns)
    notes = (f"Each cell: the test score of a {spec.n_layers}-layer model (d_model {spec.d_model}) of that mixer "
             f"trained on that task at that length for {spec.budget()} (batch {spec.batch_size}, seed {spec.seed}, "
             f"{spec.device}), scored on {spec.num_test} held-out test sequences ({'; '.join(metrics)}). "
             f"{len(rows)} of {total} cells finished; results.csv has parameters, steps, tokens seen and times.")
    return "\n".join([f"`{spec.command(out)}`", "", notes, "", line(header), sep, *(line(b) for b in body), ""])


def heatmap(spec: GridSpec, rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per task: mixers (rows) x lengths (columns), colour and label the test score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    score = {(r["mixer"], r["task"], int(r["length"])): float(r["score"]) for r in rows}
    n = len(spec.tasks)
    fig, axes = plt.subplots(1, n, figsize=(1.2 + (0.9 * len(spec.lengths) + 1.6) * n, 1.4 + 0.45 * len(spec.mixers)),
                             squeeze=False, layout="constrained")
    image = None
    for ax, task in zip(axes[0], spec.tasks):
        grid = np.array([[score.get((m, task, length), np.nan) for length in spec.lengths] for m in spec.mixers])
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if not np.isnan(v) and v > 0.6 else "white")
        ax.set_xticks(range(len(spec.lengths)), [str(x) for x in spec.lengths])
        ax.set_yticks(range(len(spec.mixers)), spec.mixers if ax is axes[0][0] else [""] * len(spec.mixers))
        ax.set_xlabel("length (tokens)")
        ax.set_title(f"{task} (test/{cell_metric(task)})", fontsize=10)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    layers = f"{spec.n_layers} layer{'s' * (spec.n_layers != 1)}"
    fig.suptitle(f"long-context suite: {spec.budget()} per cell, d_model {spec.d_model}, {layers}", fontsize=10)
    fig.savefig(path, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------


def add_command(bench: argparse._SubParsersAction) -> None:
    """``mmseq bench longcontext``; values are checked when it runs, so that a bad one is one line."""
    sizes_help = "; ".join(f"{t.name}: {t.what}" for t in SUITE.values())
    p = bench.add_parser(
        "longcontext", help="the long-context suite's mixer x task x length grid under one training budget",
        description="Train and score every mixer x task x length of the long-context suite under one budget "
                    "(through the runner, as `mmseq train`), writing DIR/results.csv, results.md and heatmap.png. "
                    "Run again with the same arguments to continue an interrupted grid. "
                    f"A length is the number of tokens the model reads; each task sets from it: {sizes_help}.")
    p.add_argument("--mixers", required=True,
                   help="comma-separated mixer names, e.g. attention,mamba; 'all' for every registered mixer")
    p.add_argument("--tasks", required=True, help=f"comma-separated tasks: {', '.join(SUITE)}")
    p.add_argument("--lengths", required=True, help="comma-separated sequence lengths in tokens, e.g. 64,128")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the grid (new, or one to continue)")
    p.add_argument("--steps", help="training budget of each cell in optimizer steps")
    p.add_argument("--tokens", help="training budget of each cell in tokens seen (steps follow from the length)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available, else cpu)")
    p.add_argument("--seed", default="0", help="seed of data and initialization (default 0)")
    p.add_argument("--d-model", default="64", help="model width (default 64)")
    p.add_argument("--n-layers", default="2", help="mixer layers (default 2)")
    p.add_argument("--batch-size", default="32", help="sequences per step (default 32)")
    p.add_argument("--num-test", default="500", help="held-out sequences scored per cell (default 500; as many "
                                                      "validation sequences pick the checkpoint)")
    p.add_argument("--fasta", help="DNA tasks: a FASTA file or `mmseq data make dna-genome` folder (default: the "
                                   "built-in genome, made in DIR/dna-genome)")
    p.set_defaults(func=_cmd_longcontext)


def _cmd_longcontext(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    return run_grid(spec, Path(args.out))
