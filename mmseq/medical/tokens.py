"""CT volumes to token files and back (``mmseq tokenize-ct`` / ``mmseq detokenize-ct``).

A token file is a safetensors file holding the token ids and everything needed to write the decoded volume
back in the input's geometry::

    ids            int64 [d, h, w]      LFQ token ids (MSB-first bit-packed codes)
    affine         float64 [4, 4]       the tokenized grid (canonical S, L, P layout; see mmseq.medical.io)
    source_affine  float64 [4, 4]       the input file's own affine
    metadata       format, shape (the grid's D, H, W before padding), source_shape, source_axcodes,
                   hu_min, hu_max, spacing, token_bits, tokenizer (class path), source (file name)

Tokenizing a folder or a CT-RATE split writes one token file per volume plus ``index.csv``; it is resumable
(finished files are skipped; every file is written to a temporary name and renamed, so a killed run leaves
no half-written file), and it runs in this process or over several processes or GPUs
(:mod:`mmseq.medical.tokens_ddp`) with the same files as a result, byte for byte.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmseq.errors import UserError
from mmseq.runner.pretrained import atomic_write

from .io import CTPreprocess, CTVolume, load_ct, preprocess, save_ct, unwindow

FORMAT = "mmseq-ct-tokens/1"
INDEX = "index.csv"


@dataclass
class CTTokens:
    """Token ids of one volume and the geometry to write it back."""

    ids: torch.Tensor  # [d, h, w] int64
    affine: np.ndarray  # [4, 4] of the tokenized grid
    shape: tuple[int, int, int]  # (D, H, W) of the grid before the tokenizer's padding
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_axcodes: tuple[str, str, str]
    hu_min: float
    hu_max: float
    token_bits: int
    tokenizer: str = ""
    source: str = ""

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a token file atomically; refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise UserError(f"{path} already exists; choose another output or remove it first")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"ids": self.ids.to(torch.int64).contiguous(),
                   "affine": torch.from_numpy(np.asarray(self.affine, dtype=np.float64)),
                   "source_affine": torch.from_numpy(np.asarray(self.source_affine, dtype=np.float64))}
        meta = {"format": FORMAT, "shape": _join(self.shape), "source_shape": _join(self.source_shape),
                "source_axcodes": "".join(self.source_axcodes), "hu_min": repr(self.hu_min),
                "hu_max": repr(self.hu_max), "token_bits": str(self.token_bits), "tokenizer": self.tokenizer,
                "source": self.source}
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(_safetensors_bytes(tensors, meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CTTokens:
        """Read a token file; one-line errors for anything that is not one."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"token file not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise UserError(f"{path} is not a CT token file (made by `mmseq tokenize-ct`)")
                t = {k: f.get_tensor(k) for k in ("ids", "affine", "source_affine")}
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is unreadable or truncated ({str(e).splitlines()[0]})") from None
        except KeyError as e:
            raise UserError(f"{path} lacks the tensor {e}; re-create it with `mmseq tokenize-ct`") from None
        return cls(ids=t["ids"], affine=t["affine"].numpy(), shape=_split(meta["shape"]),
                   source_affine=t["source_affine"].numpy(), source_shape=_split(meta["source_shape"]),
                   source_axcodes=tuple(meta["source_axcodes"]), hu_min=float(meta["hu_min"]),
                   hu_max=float(meta["hu_max"]), token_bits=int(meta["token_bits"]),
                   tokenizer=meta.get("tokenizer", ""), source=meta.get("source", ""))

    def codes(self) -> torch.Tensor:
        """The +-1 codes [bits, d, h, w] (what the report generator reads)."""
        from .lfq import indices_to_codes

        return indices_to_codes(self.ids[None], self.token_bits, torch.float32)[0]


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file with its header's keys sorted: safetensors writes them in hash order, which differs
    from process to process, so the same tokens would make different bytes in each run (and a run over several
    processes could not be compared with one over one)."""
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data start 8-byte aligned, as safetensors pads them
    return len(header).to_bytes(8, "little") + header + raw[8 + n:]


def _join(values: Iterable) -> str:
    return ",".join(str(int(v)) for v in values)


def _split(text: str) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in text.split(","))
    return a, b, c


def tokenizer_preprocess(tokenizer) -> CTPreprocess:
    """The preprocessing a tokenizer was trained with (its ``preprocess`` argument), BTB3D's by default."""
    cfg = dict(getattr(tokenizer, "init_args", {}).get("preprocess") or {})
    for key in ("spacing", "size"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    return CTPreprocess(**cfg)


@dataclass
class PreparedVolume:
    """A volume preprocessed for the tokenizer, with the geometry its token file keeps (no model needed to make
    one, so loader processes can prepare volumes while the model encodes others)."""

    x: torch.Tensor  # [D, H, W] float32 in [-1, 1] on the tokenizer's grid
    affine: np.ndarray  # [4, 4] of that grid
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    source_axcodes: tuple[str, str, str]
    hu_min: float
    hu_max: float
    source: str = ""


def prepare_volume(volume: CTVolume, cfg: CTPreprocess, *, source: str = "") -> PreparedVolume:
    """A canonical volume -> the tokenizer's input (``cfg``: see :func:`tokenizer_preprocess`)."""
    x, grid = preprocess(volume, cfg)
    return PreparedVolume(x=x, affine=grid.affine,
                          source_affine=volume.source_affine if volume.source_affine is not None else volume.affine,
                          source_shape=volume.source_shape or tuple(volume.array.shape),
                          source_axcodes=volume.source_axcodes or ("S", "L", "P"), hu_min=cfg.hu_min,
                          hu_max=cfg.hu_max, source=source)


@torch.no_grad()
def encode_prepared(tokenizer, prepared: PreparedVolume, *, window: int = 32, progress: bool = False) -> CTTokens:
    """A prepared volume -> its tokens, encoded ``window`` slices at a time (constant memory, exact). The volume
    stays where it is (CPU memory); only each window goes to the model's device."""
    d, h, w = prepared.x.shape
    padded = tokenizer.pad_volume(prepared.x[None, None])
    ids, _ = tokenizer.encode_windowed(padded, window=window, progress=progress)
    cls = type(tokenizer)
    return CTTokens(ids=ids[0].cpu(), affine=prepared.affine, shape=(d, h, w), source_affine=prepared.source_affine,
                    source_shape=prepared.source_shape, source_axcodes=prepared.source_axcodes,
                    hu_min=prepared.hu_min, hu_max=prepared.hu_max, token_bits=tokenizer.token_bits,
                    tokenizer=f"{cls.__module__}.{cls.__qualname__}", source=prepared.source)


def tokenize_volume(tokenizer, volume: CTVolume, *, window: int = 32, progress: bool = False,
                    source: str = "") -> CTTokens:
    """One canonical volume -> its tokens, encoded ``window`` slices at a time (constant memory, exact)."""
    prepared = prepare_volume(volume, tokenizer_preprocess(tokenizer), source=source)
    return encode_prepared(tokenizer, prepared, window=window, progress=progress)


@torch.no_grad()
def detokenize(tokenizer, tokens: CTTokens, *, window: int = 8, progress: bool = False) -> CTVolume:
    """Tokens -> the decoded HU volume on the tokenized grid, carrying the source geometry for ``save_ct``."""
    if tokens.token_bits != tokenizer.token_bits:
        raise UserError(f"the tokens have {tokens.token_bits}-bit codes but the tokenizer makes "
                        f"{tokenizer.token_bits}-bit codes; decode with the tokenizer that made them")
    x = tokenizer.decode_windowed(tokens.ids[None], window=window, progress=progress)[0, 0]
    d, h, w = tokens.shape
    hu = unwindow(x[:d, :h, :w].float().clamp(-1, 1), tokens.hu_min, tokens.hu_max)
    return CTVolume(hu, tokens.affine, source_affine=tokens.source_affine, source_shape=tokens.source_shape,
                    source_axcodes=tokens.source_axcodes)


@dataclass
class VolumeSource:
    """Where a volume is and how its raw values become HU (CT-RATE keeps slope/intercept in a CSV)."""

    path: Path
    slope: float | None = None
    intercept: float | None = None
    in_hu: bool | None = None

    def load(self) -> CTVolume:
        if self.slope is None and self.intercept is None:
            return load_ct(self.path, already_hu=self.in_hu)
        return load_ct(self.path, slope=self.slope, intercept=self.intercept, already_hu=self.in_hu)


def tokenize_file(tokenizer, path: str | Path | VolumeSource, out: str | Path, *, window: int = 32,
                  progress: bool = False, overwrite: bool = False) -> Path:
    """A NIfTI file or DICOM folder (or a VolumeSource with CT-RATE's rescale values) -> a token file."""
    source = path if isinstance(path, VolumeSource) else VolumeSource(Path(path))
    path = source.path
    volume = source.load()
    return tokenize_volume(tokenizer, volume, window=window, progress=progress, source=Path(path).name).save(
        out, overwrite=overwrite)


def detokenize_file(tokenizer, tokens_path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """A token file -> a NIfTI volume in the geometry of the file that was tokenized (resampled grid)."""
    volume = detokenize(tokenizer, CTTokens.load(tokens_path))
    return save_ct(volume, out, like=volume, overwrite=overwrite)


def token_name(volume_path: Path) -> str:
    """``valid_1_a_1.nii.gz`` -> ``valid_1_a_1.safetensors``; a DICOM folder -> ``<folder>.safetensors``."""
    name = volume_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".safetensors"
    return name + ".safetensors"


def tokenize_many(tokenizer, inputs: list[Path | VolumeSource], out_dir: str | Path, *, window: int = 32,
                  progress: bool = True, devices: int = 1, accelerator: str = "auto", num_workers: int = 0) -> dict:
    """Tokenize every input into ``out_dir`` (one token file each + ``index.csv``); resumable.

    A file already in ``out_dir`` is skipped, so a killed run picks up where it stopped. A volume that fails
    to load is listed with its error and the rest go on. Returns counts.

    ``devices`` > 1 or ``accelerator="gpu"`` encodes the volumes still to do in ``devices`` processes (one per
    GPU, or CPU processes) through Lightning's predict loop (:mod:`mmseq.medical.tokens_ddp`), with
    ``num_workers`` loader processes each; the token files and ``index.csv`` are the same as one process makes.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [s if isinstance(s, VolumeSource) else VolumeSource(Path(s)) for s in inputs]
    targets = [out_dir / token_name(s.path) for s in sources]
    existed = [t.is_file() for t in targets]
    todo = [i for i, e in enumerate(existed) if not e]
    parallel = bool(todo) and (devices > 1 or accelerator == "gpu")
    if parallel:
        from .tokens_ddp import tokenize_parallel

        # What fails there is left undone and retried below, which records its error as one process would.
        tokenize_parallel(tokenizer, [sources[i] for i in todo], [targets[i] for i in todo], window=window,
                          devices=devices, accelerator=accelerator, num_workers=num_workers, progress=progress)
    rows, failed = [], 0
    for source, target in tqdm(list(zip(sources, targets)), desc="tokenizing", unit="volume",
                               disable=not progress or parallel):
        status = "ok"
        if not target.is_file():
            try:
                tokenize_file(tokenizer, source, target, window=window)
            except UserError as e:
                status, failed = f"error: {e}", failed + 1
        rows.append({"source": str(source.path), "tokens": target.name if status == "ok" else "", "status": status})

    def write_index(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["source", "tokens", "status"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out_dir / INDEX, write_index)
    skipped = sum(existed)
    return {"volumes": len(inputs), "tokenized": len(inputs) - skipped - failed, "skipped_existing": skipped,
            "failed": failed, "index": str(out_dir / INDEX)}
