"""What the three tabs share: settings, upload checks, status lines, small image helpers. No gradio here."""

from __future__ import annotations

import functools
import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mmseq.errors import UserError

log = logging.getLogger("mmseq.apps")
MB = 2**20  # Gradio's max_file_size counts "mb" in these units


def examples_dir() -> Path:
    """The shipped example files (apps/examples, installed as mmseq/apps/examples)."""
    return Path(str(resources.files("mmseq.apps") / "examples"))


@dataclass
class Settings:
    """Limits and models of a running demo (``mmseq demo`` options)."""

    max_file_mb: float = 50.0
    max_audio_seconds: float = 60.0
    concurrency: int = 2
    checkpoints: dict[str, str] = field(default_factory=dict)
    max_voxels: int = 512 * 512 * 1200  # a volume larger than this is refused before it is read
    max_unzipped_mb: float = 2048.0  # a DICOM zip may not expand past this (MB of 2**20 bytes)


def check_upload(path: str | Path | None, suffixes: tuple[str, ...], what: str, settings: Settings) -> Path:
    """An uploaded file that exists, is not empty, fits the size limit and has one of ``suffixes``."""
    if path is None or str(path) == "":
        raise UserError(f"no file: upload {what} or pick an example")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p.name}: the upload did not arrive; try again")
    name = p.name.lower()
    if not name.endswith(suffixes):
        raise UserError(f"{p.name}: not {what} (accepted: {', '.join(suffixes)})")
    size = p.stat().st_size
    if size == 0:
        raise UserError(f"{p.name} is empty (0 bytes)")
    if size > settings.max_file_mb * MB:
        raise UserError(f"{p.name} is {size / MB:.1f} MB, over this demo's {settings.max_file_mb:g} MB limit")
    return p


def short_message(error: BaseException, path: str | Path | None = None) -> str:
    """One line for the page: the server's temporary folder is replaced by the file's own name."""
    text = " ".join(str(error).split()) or type(error).__name__
    if path:
        p = Path(path)
        text = text.replace(str(p), p.name).replace(str(p.parent) + "/", "")
    return text


def ok_status(text: str) -> str:
    return f'<div class="mmseq-status mmseq-ok">{html.escape(text)}</div>'


def error_status(text: str) -> str:
    return f'<div class="mmseq-status mmseq-error" role="alert"><b>Error:</b> {html.escape(text)}</div>'


def guarded(n_outputs: int, status_index: int, path_arg: int | None = 0) -> Callable:
    """Wrap a tab handler so that any failure becomes an error status line (never a traceback in the page).

    The handler returns ``n_outputs`` values; on failure every output is cleared (None) except the status at
    ``status_index``. A UserError's message is shown as is; anything else is logged with its traceback on the
    server and shown as one line."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any) -> tuple:
            path = args[path_arg] if path_arg is not None and len(args) > path_arg else None
            try:
                return fn(*args)
            except UserError as e:
                message = short_message(e, path if isinstance(path, str | Path) else None)
            except Exception as e:  # noqa: BLE001 - the page gets one line; the log keeps the traceback
                log.exception("demo handler %s failed", fn.__name__)
                message = f"could not process this input ({type(e).__name__}: " \
                          f"{short_message(e, path if isinstance(path, str | Path) else None)})"
            out: list[Any] = [None] * n_outputs
            out[status_index] = error_status(message)
            return tuple(out)

        return inner

    return wrap


class LRUCache:
    """A small thread-safe cache: results of the last few uploads, keyed by the file's content hash."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def file_hash(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LazyModel:
    """Load a model on first use, once, even when two requests ask at the same time."""

    def __init__(self, loader: Callable[[], Any]) -> None:
        self._loader = loader
        self._model: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._loader()
            return self._model


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] or [H, W, C] -> [height, width] by nearest neighbour (no smoothing: voxels stay visible)."""
    rows = np.minimum((np.arange(height) + 0.5) * img.shape[0] / height, img.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * img.shape[1] / width, img.shape[1] - 1).astype(int)
    return img[rows][:, cols]


def new_figure(width: float, height: float, dpi: int = 100):
    """A matplotlib Figure on the Agg canvas (no pyplot: safe in the server's worker threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """A matplotlib figure -> RGB [H, W, 3] uint8."""
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def colormap(name: str) -> np.ndarray:
    """A matplotlib colormap as a [256, 3] uint8 lookup table."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
