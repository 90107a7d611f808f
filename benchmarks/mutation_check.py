"""Mutation check: break the code on purpose, one listed mutation at a time, and see whether the tests notice.

    .venv/bin/python benchmarks/mutation_check.py                  # every mutation, on a copy of HEAD
    .venv/bin/python benchmarks/mutation_check.py --only rotary    # mutations whose name contains "rotary"
    .venv/bin/python benchmarks/mutation_check.py --worktree       # copy the working tree instead of HEAD
    .venv/bin/python benchmarks/mutation_check.py --rev HEAD~5     # copy an older commit (to see old holes)
    .venv/bin/python benchmarks/mutation_check.py --list           # the mutations, without running anything

Each mutation names a file, a snippet of it, the snippet's replacement and the tests that should fail. The
script copies the repository into a temporary folder (a commit, HEAD by default, or with ``--worktree`` the tracked
and untracked files as they are on disk) and runs each mutation's tests there once unmutated (they must pass).
Then, for each mutation, it replaces the snippet, runs ``pytest -x -q`` on the listed tests, and puts the file back
(in a ``finally``) before the next one. The repository itself is never written to. It refuses to start when a
target file has uncommitted changes, and reports a mutation whose snippet is not found exactly once as "stale".

Result per mutation: "killed" (a test failed: the first one is named), "survived" (the tests passed: a hole),
"stale", or "baseline fails" (the tests fail without the mutation, so the mutation says nothing). The exit
status is 0 when every mutation was killed. Not part of the test suite: it takes several minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: paths or node ids, optionally "-k", "expr"


M = Mutation
KS, CC, FC, AT, DI = (f"tests/kernels/test_{n}.py" for n in ("selective_scan", "causal_conv1d", "fft_conv",
                                                                "attention", "dispatch"))
EXPLICIT = "mmseq/mixers/_explicit_kernel.py"
NO_DELAY = ("k_future = F.pad(k[1], (1, 0))[:, :L]", "k_future = k[1]")
NO_FLIP = ("z[:, :CH] + z[:, CH:].flip(-1)", "z[:, :CH] + z[:, CH:]")
ROTATION = "out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)"

MUTATIONS: list[Mutation] = [
    # --- noncausal explicit-kernel mixers (longconv, sgconv) ---
    M("longconv: future kernel not delayed (u[t] counted twice)", EXPLICIT, *NO_DELAY,
      ("tests/mixers/test_longconv.py",)),
    M("sgconv: future kernel not delayed (u[t] counted twice)", EXPLICIT, *NO_DELAY,
      ("tests/mixers/test_sgconv.py",)),
    M("longconv: future half not flipped back", EXPLICIT, *NO_FLIP, ("tests/mixers/test_longconv.py",)),
    M("sgconv: future half not flipped back", EXPLICIT, *NO_FLIP, ("tests/mixers/test_sgconv.py",)),
    # --- rotary and the attention mixers ---
    M("rotary: no rotation [rotary tests]", "mmseq/mixers/rotary.py", ROTATION,
      "out = torch.stack((x1, x2), dim=-1)", ("tests/mixers/test_rotary.py",)),
    M("rotary: no rotation [swa tests]", "mmseq/mixers/rotary.py", ROTATION,
      "out = torch.stack((x1, x2), dim=-1)", ("tests/mixers/test_swa.py",)),
    M("rotary: no rotation [chunked tests]", "mmseq/mixers/rotary.py", ROTATION,
      "out = torch.stack((x1, x2), dim=-1)", ("tests/mixers/test_chunked.py",)),
    M("rotary: no rotation [attention tests]", "mmseq/mixers/rotary.py", ROTATION,
      "out = torch.stack((x1, x2), dim=-1)", ("tests/mixers/test_attention.py",)),
    M("rotary: turns the other way", "mmseq/mixers/rotary.py", ROTATION,
      "out = torch.stack((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)", ("tests/mixers/test_rotary.py",)),
    M("rotary: halves paired instead of neighbours", "mmseq/mixers/rotary.py",
      "x1, x2 = x[..., 0::2], x[..., 1::2]", "x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]",
      ("tests/mixers/test_rotary.py",)),
    M("swa: step ignores the position offset", "mmseq/mixers/swa.py",
      "q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)",
      "q, k = self.rotary(q), self.rotary(k)", ("tests/mixers/test_swa.py",)),
    M("chunked: step resets at the wrong position", "mmseq/mixers/chunked.py",
      "if state.t % self.chunk == 0:", "if state.t % self.chunk == 1:", ("tests/mixers/test_chunked.py",)),
    M("attention: rotary applied in cross attention", "mmseq/mixers/attention.py",
      "if self.rotary is not None and context is None:", "if self.rotary is not None:",
      ("tests/mixers/test_attention.py",)),
    M("attention: causal mask in cross attention", "mmseq/mixers/attention.py",
      "is_causal=self.causal and context is None,", "is_causal=self.causal,", ("tests/mixers/test_attention.py",)),
    M("MixerBlock: context dropped", "mmseq/mixers/blocks.py",
      'kwargs = {"context": context} if context is not None else {}', "kwargs = {}",
      ("tests/mixers/test_blocks.py",)),
    M("MixerStack: context not passed on", "mmseq/mixers/blocks.py",
      "x = block(x, context=context)", "x = block(x)", ("tests/mixers/test_blocks.py",)),
    M("mamba: A not negated (a growing scan)", "mmseq/mixers/mamba.py",
      "A = -torch.exp(self.A_log)  # [E, N]", "A = torch.exp(self.A_log)  # [E, N]",
      ("tests/mixers/test_mamba.py",)),
    # --- kernels ---
    M("selective_scan ref: input not scaled by dt", "kernels/selective_scan.py",
      "x = dt * u.to(cdt)  # [B, D, L]", "x = u.to(cdt)  # [B, D, L]", (KS, "-k", "ref_matches_scalar")),
    M("selective_scan torch, vectorized: D skip dropped", "kernels/selective_scan.py",
      "y.addcmul_(u_t, D.reshape(G, Dg))", "y.addcmul_(u_t, 0 * D.reshape(G, Dg))",
      (KS, "-k", "torch and vectorized")),
    M("selective_scan torch, compiled core: D skip dropped", "kernels/selective_scan.py",
      "y = y + u_c * D.to(cdt)[:, None]", "y = y + 0 * u_c", (KS, "-k", "torch and compiled")),
    M("selective_scan CPU core: output ignores C", "kernels/csrc/selective_scan_cpu.cpp",
      "acc += Ct[n] * hn;", "acc += hn;", ("tests/kernels/test_cpu_build.py", "-k", "float64")),
    M("selective_scan CPU core: adjoint carry not decayed", "kernels/csrc/selective_scan_cpu.cpp",
      "q[n] = at[n] * gn;", "q[n] = gn;", ("tests/kernels/test_cpu_build.py", "-k", "float64")),
    M("selective_scan triton: gate z instead of silu(z)", "kernels/selective_scan.py",
      "b_y *= b_z * tl.sigmoid(b_z)", "b_y *= tl.sigmoid(b_z)", (KS, "-k", "triton_float64")),
    M("selective_state_update: input not scaled by dt", "kernels/selective_scan.py",
      "(dt * x.to(cdt))[..., None] * B", "x.to(cdt)[..., None] * B",
      (KS, "-k", "state_update_equals_the_step_written_out")),
    M("causal_conv1d ref: taps reversed", "kernels/causal_conv1d.py",
      "y = y + weight[:, k, None].to(cdt) * xc[..., k : k + L]",
      "y = y + weight[:, K - 1 - k, None].to(cdt) * xc[..., k : k + L]", (CC, "-k", "written_out")),
    M("causal_conv1d torch update: taps reversed", "kernels/causal_conv1d.py",
      "y = (window.to(cdt) * weight.to(cdt)).sum(-1)", "y = (window.to(cdt) * weight.to(cdt).flip(-1)).sum(-1)",
      (CC, "-k", "update")),
    M("fft_conv torch: outputs not offset (noncausal)", "kernels/fft_conv.py",
      "n=n)[..., c : c + L]", "n=n)[..., :L]", (FC, "-k", "torch")),
    M("fft_conv ref: padding sides swapped", "kernels/fft_conv.py",
      "F.pad(uc, (Lk - 1 - c, c))", "F.pad(uc, (c, Lk - 1 - c))",
      (FC, "-k", "delta_kernel or cumsum or same_padded")),
    M("fft_conv triton: tap 0 skipped", "kernels/fft_conv.py",
      "s_lo = tl.maximum(t0 + off - L_in + 1, 0)", "s_lo = tl.maximum(t0 + off - L_in + 1, 1)",
      (FC, "-k", "triton and not bf16")),
    M("attention torch: default scale 1/P", "kernels/attention.py",
      "    scale = q.shape[-1] ** -0.5 if scale is None else scale\n    if window is not None:",
      "    scale = q.shape[-1] ** -1.0 if scale is None else scale\n    if window is not None:",
      (AT, "-k", "torch_matches_ref_fp32")),
    M("attention triton: window one key wider", "kernels/attention.py",
      "b_ok = b_ok & (b_d < window) & (b_d > -window)", "b_ok = b_ok & (b_d <= window) & (b_d > -window)",
      (AT, "-k", "triton_matches_ref_fp32 and swa")),
    M("attention ref: chunks see earlier chunks", "kernels/attention.py",
      "allowed &= (i // chunk) == (j // chunk)", "allowed &= (i // chunk) >= (j // chunk)",
      (AT, "-k", "chunk", "tests/mixers/test_chunked.py")),
    M("pick_impl: never defaults to triton on CUDA", "kernels/_dispatch.py",
      'return "triton" if device.type == "cuda" and triton_importable() else "torch"', 'return "torch"', (DI,)),
    M("pick_impl: grants triton where it cannot run", "kernels/_dispatch.py",
      'if impl == "triton" and not triton_usable(device):', 'if impl == "triton" and False:', (DI,)),
    M("triton_interpret: TRITON_INTERPRET=0 counts as on", "kernels/_dispatch.py",
      'not in ("", "0")', 'not in ("",)', (DI,)),
    # --- runner: optimizer, schedule, checkpoints ---
    M("param_groups: _no_weight_decay ignored", "mmseq/runner/optim.py",
      'if p.dim() < 2 or getattr(p, "_no_weight_decay", False):', "if p.dim() < 2:",
      ("tests/runner/test_optim.py",)),
    M("lr_factor: warm-up starts at 0", "mmseq/runner/optim.py",
      "return (step + 1) / cfg.warmup_steps", "return step / cfg.warmup_steps", ("tests/runner/test_optim.py",)),
    M("lr_factor: cosine over half a period", "mmseq/runner/optim.py",
      "math.cos(math.pi * t)", "math.cos(math.pi * t / 2)", ("tests/runner/test_optim.py",)),
    M("lr_factor: min_lr_ratio ignored", "mmseq/runner/optim.py",
      "floor = cfg.min_lr_ratio", "floor = 0.0", ("tests/runner/test_optim.py",)),
    M("lr_factor: decay span includes the warm-up", "mmseq/runner/optim.py",
      "span = max(1, max_steps - cfg.warmup_steps)", "span = max(1, max_steps)", ("tests/runner/test_optim.py",)),
    M("lr_factor: linear schedule rises", "mmseq/runner/optim.py",
      "return floor + (1 - floor) * (1 - t)", "return floor + (1 - floor) * t", ("tests/runner/test_optim.py",)),
    M("checkpoint: loads pickled objects", "mmseq/runner/checkpoint.py",
      "map_location=map_location, weights_only=True)", "map_location=map_location, weights_only=False)",
      ("tests/runner/test_pretrained.py", "-k", "pickled")),
    M("checkpoint: temp file left behind on failure", "mmseq/runner/checkpoint.py",
      "        if os.path.exists(tmp):\n            os.unlink(tmp)\n", "        pass\n",
      ("tests/runner/test_pretrained.py", "-k", "atomic")),
    M("checkpoint: written in place (not atomic)", "mmseq/runner/checkpoint.py",
      'fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)',
      "fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), str(path)",
      ("tests/runner/test_pretrained.py", "-k", "atomic")),
    M("checkpoint: paths of a copied run not moved", "mmseq/runner/checkpoint.py",
      "            relocate_checkpoint_paths(checkpoint, self.relocate_to)", "            pass",
      ("tests/runner/test_resume.py", "-k", "copied")),
    M("csv log: rows past the checkpoint kept on resume", "mmseq/runner/logs.py",
      "int(float(r[\"step\"])) < limit]", "int(float(r[\"step\"])) < limit + 10**9]",
      ("tests/runner/test_resume.py", "-k", "extends")),
    M("export: a model's arguments recorded by the innermost __init__", "mmseq/runner/pretrained.py",
      'if "_init_args" not in self.__dict__:', "if True:", ("tests/runner/test_pretrained.py",)),
    M("config: a renamed mixer merges its base's arguments", "mmseq/runner/config.py",
      'return "name" in new and new.get("name") != old.get("name")', "return False",
      ("tests/runner/test_base_configs.py",)),
    M("template: mixers' auxiliary loss not added", "mmseq/runner/module.py",
      'batch) + aux_loss(self.model)', "batch)", ("tests/runner/test_module.py",)),
    # --- medical ---
    M("tokenizer: windowed encoding forgets the causal state between chunks", "mmseq/medical/causal3d.py",
      "        pending = cache.frames.get(self)\n", "        pending = None\n", ("tests/medical/test_tokenizer.py",)),
    M("ct tokens: decoded volume not cropped back to the tokenized grid", "mmseq/medical/tokens.py",
      "x[:d, :h, :w]", "x", ("tests/medical/test_cli.py", "-k", "geometry")),
    M("labeler: negation ignored", "mmseq/medical/labeler.py",
      "def _negated_scopes(clause: str) -> list[tuple[int, int]]:\n",
      "def _negated_scopes(clause: str) -> list[tuple[int, int]]:\n    return []\n",
      ("tests/medical/test_labeler.py",)),
    # --- vision ---
    M("mvfuser: the scan's D skip dropped", "mmseq/vision/fuser.py",
      "C.transpose(1, 2), self.D,", "C.transpose(1, 2), None,", ("tests/vision/test_fuser.py",)),
    M("augment: image flipped, label not", "mmseq/vision/augment.py",
      "image, label = image.flip(-1), label.flip(-1)", "image = image.flip(-1)",
      ("tests/vision/test_augment.py",)),
    M("labels: car in Cityscapes/GTA5 ids mapped to truck", "mmseq/vision/labels.py",
      "26: 13,", "26: 14,", ("tests/vision/test_datasets.py",)),
    M("mIoU: ignore pixels counted", "mmseq/vision/evaluate.py",
      "keep = target != self.ignore_index", "keep = target == target", ("tests/vision/test_evaluate.py",)),
    M("sliding window: overlaps summed, not averaged", "mmseq/vision/evaluate.py",
      "scores /= count.to(", "scores *= count.to(", ("tests/vision/test_evaluate.py",)),
    M("mask loss: no-object weighted like a class", "mmseq/vision/losses.py",
      "weights[-1] = no_object_weight", "weights[-1] = 1.0", ("tests/vision/test_head.py",)),
    M("inference: the no-object column kept as a class", "mmseq/vision/head.py",
      'probs = outputs["pred_logits"].softmax(-1)[..., :-1]', 'probs = outputs["pred_logits"].softmax(-1)[..., 1:]',
      ("tests/vision/test_head.py",)),
    # --- audio ---
    M("augment: speed-perturbed clip cut from the start", "mmseq/audio/augment.py",
      'fix_length(speed_perturb(x, factor, sr), t, align="center")',
      'fix_length(speed_perturb(x, factor, sr), t, align="start")', ("tests/audio/test_augment.py",)),
    M("logmel: magnitude instead of power", "mmseq/audio/frontends.py",
      "n_mels=n_mels, center=False, power=2.0)", "n_mels=n_mels, center=False, power=1.0)",
      ("tests/audio/test_frontends.py",)),
]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def _populate(dest: Path, worktree: bool, rev: str) -> None:
    """Copy the repository into ``dest``: commit ``rev`` (git archive), or the tracked and untracked files on disk."""
    if worktree:
        for rel in _git("ls-files", "-co", "--exclude-standard", "-z").split("\0"):
            src = REPO / rel
            if rel and src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        tar = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, check=True,
                             capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(dest, filter="data")
    # kernels/ ships as mmseq.kernels (package-dir in pyproject); in the copy a link makes it resolve there
    # instead of through the editable install, which points at the repository.
    link = dest / "mmseq" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels", target_is_directory=True)


def _env(copy: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEQ_")}
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file of the same size and mtime must not meet a stale .pyc
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _check_copy_is_imported(copy: Path) -> None:
    code = "import mmseq, mmseq.kernels; print(mmseq.__file__); print(mmseq.kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=_env(copy), capture_output=True, text=True,
                         check=True).stdout.split()
    root = str(copy.resolve())
    if not all(str(Path(p).resolve()).startswith(root) for p in out):
        raise SystemExit(f"the copy is not what gets imported (got {out}); nothing was run")


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def _run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """-> (status, detail): status "pass", "fail" (detail: the first failing test), "none" or "timeout"."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests]
    try:
        r = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result within {timeout:.0f} s"
    if r.returncode == 0:
        return "pass", ""
    if r.returncode == 5:
        return "none", "no test selected"
    m = _FAILED.search(r.stdout)
    if m:
        return "fail", m.group(2)
    tail = (r.stdout + r.stderr).strip().splitlines()
    return "fail", f"pytest exit {r.returncode}: {tail[-1] if tail else ''}"


def _table(rows: list[tuple[str, ...]]) -> str:
    head = ("mutation", "file", "result", "caught by / note")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run the mutations whose name contains TEXT (repeatable)")
    ap.add_argument("--worktree", action="store_true", help="copy the working tree instead of a commit")
    ap.add_argument("--rev", default="HEAD", help="the commit to copy (default HEAD)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)")
    args = ap.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    if args.list or not chosen:
        for m in chosen:
            print(f"{m.name}  [{m.path}]  -> {' '.join(m.tests)}")
        return 0 if chosen else 2

    targets = sorted({m.path for m in chosen})
    dirty = _git("status", "--porcelain", "--", *targets).strip()
    if dirty:
        print("refusing to start: target files have uncommitted changes:\n" + dirty, file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks below run
    t_start = time.monotonic()
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="mmseq-mutation-") as tmp:
        copy = Path(tmp)
        _populate(copy, args.worktree, args.rev)
        _check_copy_is_imported(copy)
        source = "the working tree" if args.worktree else _git("rev-parse", "--short", args.rev).strip()
        print(f"copy of {source} in {copy}; {len(chosen)} mutations", flush=True)

        baseline: dict[tuple[str, ...], tuple[str, str]] = {}
        for tests in dict.fromkeys(m.tests for m in chosen):
            baseline[tests] = _run_tests(copy, tests, args.timeout)
            if baseline[tests][0] != "pass":
                print(f"baseline fails for {' '.join(tests)}: {baseline[tests][1]}", flush=True)

        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            count = original.count(m.original)
            if count != 1:
                rows.append((m.name, m.path, "stale", f"snippet found {count} times"))
            elif baseline[m.tests][0] != "pass":
                rows.append((m.name, m.path, "baseline fails", baseline[m.tests][1]))
            else:
                try:
                    target.write_text(original.replace(m.original, m.mutated))
                    status, detail = _run_tests(copy, m.tests, args.timeout)
                finally:
                    target.write_text(original)
                result = {"fail": "killed", "timeout": "killed", "pass": "survived"}.get(status, status)
                rows.append((m.name, m.path, result, detail or "tests pass: " + " ".join(m.tests)))
            print(f"  {rows[-1][2]:9s} {m.name}", flush=True)

    print()
    print(_table(rows))
    killed = sum(r[2] == "killed" for r in rows)
    print(f"\n{killed}/{len(rows)} killed in {time.monotonic() - t_start:.0f} s")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
