"""The medical tab: a CT volume -> tokens -> reconstruction, three orthogonal views, and a generated report.

A volume is processed once per upload (the result is kept in the page's state and, by content hash, in a small
server cache), on the shipped tokenizer's grid (4 mm voxels: the downsampled preview), with its windowed,
constant-memory encode. Moving a slice slider or a window preset only redraws from the kept arrays.
"""

from __future__ import annotations

import html
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmseq.errors import UserError

from .common import (
    MB,
    LazyModel,
    LRUCache,
    Settings,
    check_upload,
    colormap,
    error_status,
    examples_dir,
    file_hash,
    guarded,
    ok_status,
    resize_nearest,
)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".zip")
# HU window presets: (lowest, highest) shown, black to white
WINDOWS = {"lung": (-1350.0, 150.0), "mediastinum": (-125.0, 225.0), "bone": (-450.0, 1050.0)}
ERROR_MAX_HU = 200.0  # the error map's colour scale, 0 .. this many HU
PANEL_PX = 220  # height of each drawn panel (at most)
PANEL_MAX_W = 330  # width of each drawn panel (at most)
EXAMPLES = ("chest_phantom.nii.gz",)
ENCODE_WINDOW = 8  # slices encoded at a time


@dataclass
class CTResult:
    """What one upload gives: the input and its reconstruction on the tokenizer's grid, and the tokens."""

    name: str
    grid: np.ndarray  # [D, H, W] float32 HU, the input resampled to the tokenizer's grid
    recon: np.ndarray  # [D, H, W] float32 HU, decoded from the tokens
    spacing: tuple[float, float, float]  # grid mm (D, H, W)
    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    token_grid: tuple[int, int, int]
    token_bits: int
    codes: object = field(repr=False)  # torch [bits, d, h, w]: what the report generator reads
    seconds: float = 0.0
    report: str | None = None
    findings: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(np.prod(self.token_grid))

    def compression(self) -> tuple[float, float]:
        """Bits of 16-bit voxels over the tokens' bits: (the input as uploaded, the 4 mm grid)."""
        token_bits = self.n_tokens * self.token_bits
        return (16 * float(np.prod(self.source_shape)) / token_bits, 16 * float(self.grid.size) / token_bits)

    def psnr_mae(self) -> tuple[float, float]:
        """PSNR (dB, over the tokenizer's [-1000, 1000] HU range) and mean absolute error (HU) on the grid."""
        a, b = np.clip(self.grid, -1000, 1000), np.clip(self.recon, -1000, 1000)
        mse = float(np.mean((a - b) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(2000.0 ** 2 / mse)
        return psnr, float(np.mean(np.abs(self.grid - self.recon)))


def _check_zip(path: Path, settings: Settings) -> None:
    """This demo's limits on a zipped DICOM series, from the archive's directory alone (``load_ct`` unpacks it)."""
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # load_ct names the problem in its own words
    if len(members) > 5000:
        raise UserError(f"{path.name} holds {len(members)} files; a series of at most 5000 slices is accepted")
    total = sum(m.file_size for m in members)
    if total > settings.max_unzipped_mb * MB:
        raise UserError(f"{path.name} expands to {total / MB:.0f} MB, over the {settings.max_unzipped_mb:g} MB limit")


def _check_nifti_size(path: Path, settings: Settings) -> None:
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - load_ct names the problem in its own words
        return
    n = int(np.prod(shape)) if shape else 0
    if n > settings.max_voxels:
        raise UserError(f"{path.name} holds {n:,} voxels {tuple(shape)}; this demo takes at most "
                        f"{settings.max_voxels:,}")


def load_volume(path: str | Path, settings: Settings):
    """A checked upload -> CTVolume: a .nii / .nii.gz file, or a .zip of one DICOM series."""
    from mmseq.medical.io import load_ct

    p = check_upload(path, VOLUME_SUFFIXES, "a CT volume (NIfTI, or a zip of a DICOM series)", settings)
    if p.name.lower().endswith(".zip"):
        _check_zip(p, settings)
    else:
        _check_nifti_size(p, settings)
    return load_ct(p)


# ------------------------------------------------------------------------------------------------- drawing


def _gray(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _planes(a: np.ndarray, view: str, pct: float) -> np.ndarray:
    """One slice of a [D, H, W] (S, L, P) array, oriented as radiologists read it."""
    d, h, w = a.shape
    f = float(np.clip(pct, 0, 100)) / 100
    if view == "axial":  # rows anterior -> posterior, columns patient right -> left
        return a[round(f * (d - 1))].T
    if view == "coronal":  # rows superior -> inferior
        return a[::-1, :, round(f * (w - 1))]
    return a[::-1, round(f * (h - 1)), :]  # sagittal: rows superior -> inferior, columns anterior -> posterior


def _panel_size(shape: tuple[int, int], view: str, spacing: tuple[float, float, float]) -> tuple[int, int]:
    sd, sh, sw = spacing
    row_mm, col_mm = {"axial": (sw, sh), "coronal": (sd, sh), "sagittal": (sd, sw)}[view]
    aspect = (shape[1] * col_mm) / (shape[0] * row_mm)  # width / height in mm
    height = min(PANEL_PX, PANEL_MAX_W / aspect)
    return max(8, round(height)), max(8, round(height * aspect))


def _label(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, 7 * len(text) + 6, 14], fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 220, 0))
    return np.asarray(im)


def draw_view(result: CTResult, view: str, pct: float, preset: str) -> np.ndarray:
    """[input | reconstruction | |error|] side by side for one view, RGB uint8."""
    lo, hi = WINDOWS.get(preset, WINDOWS["mediastinum"])
    a, b = _planes(result.grid, view, pct), _planes(result.recon, view, pct)
    size = _panel_size(a.shape, view, result.spacing)
    err = colormap("inferno")[np.clip(np.abs(a - b) / ERROR_MAX_HU * 255, 0, 255).astype(np.uint8)]
    panels = [_label(resize_nearest(_gray(a, lo, hi), *size), "input"),
              _label(resize_nearest(_gray(b, lo, hi), *size), "from tokens"),
              _label(resize_nearest(err, *size), f"|error| 0-{ERROR_MAX_HU:g} HU")]
    gap = np.full((size[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def stats_html(r: CTResult) -> str:
    """Sizes, token count, compression and reconstruction error as a small table."""
    ratio_src, ratio_grid = r.compression()
    psnr, mae = r.psnr_mae()
    sd = " x ".join(f"{s:.2g}" for s in r.source_spacing)
    gs = " x ".join(f"{s:.2g}" for s in r.spacing)
    rows = [
        ("input", f"{' x '.join(map(str, r.source_shape))} voxels, {sd} mm"),
        ("tokenizer grid", f"{' x '.join(map(str, r.grid.shape))} voxels, {gs} mm"),
        ("tokens", f"<b>{r.n_tokens:,}</b> ({' x '.join(map(str, r.token_grid))}), {r.token_bits} bits each"),
        ("compression", f"<b>{ratio_src:.0f}x</b> fewer bits than the 16-bit input "
                        f"({ratio_grid:.0f}x against the grid)"),
        ("reconstruction", f"PSNR {psnr:.1f} dB, mean error {mae:.0f} HU"),
        ("time", f"{r.seconds:.1f} s"),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="mmseq-stats">{body}</table>'


def _mention_spans(report: str) -> list[tuple[int, int, bool]]:
    """(start, end, negated) of each abnormality mention in ``report``, non-overlapping, in order."""
    from mmseq.medical.labeler import find_mentions, split_clauses

    low = report.lower()
    mentions = find_mentions(report)
    spans: list[tuple[int, int, bool]] = []
    cursor = 0
    for clause in split_clauses(report):
        at = low.find(clause, cursor)
        if at < 0:
            continue
        cursor = at + len(clause)
        for m in mentions:
            if m.clause != clause:
                continue
            k = clause.find(m.text)
            while k >= 0:
                spans.append((at + k, at + k + len(m.text), m.negated))
                k = clause.find(m.text, k + 1)
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    out: list[tuple[int, int, bool]] = []
    for s in spans:
        if out and s[0] < out[-1][1]:
            continue
        out.append(s)
    return out


def report_html(report: str, findings: list[str]) -> str:
    """The report with each finding it states highlighted (negated mentions struck through), then the list."""
    parts, last = [], 0
    for start, end, negated in _mention_spans(report):
        parts.append(html.escape(report[last:start]))
        cls = "mmseq-negated" if negated else "mmseq-finding"
        parts.append(f'<mark class="{cls}">{html.escape(report[start:end])}</mark>')
        last = end
    parts.append(html.escape(report[last:]))
    chips = "".join(f'<span class="mmseq-chip">{html.escape(f)}</span>' for f in findings) or "none"
    return (f'<div class="mmseq-report"><p>{"".join(parts)}</p>'
            f'<p><b>Findings stated:</b> {chips}</p>'
            '<p class="mmseq-note">Highlighted: findings the report states; struck through: findings it rules out. '
            "Written by a small model trained on phantoms; not for clinical use.</p></div>")


# --------------------------------------------------------------------------------------------------- the tab


class MedicalDemo:
    """The tab's work, callable without a browser (see ``on_upload``, ``on_view``, ``on_report``)."""

    def __init__(self, settings: Settings | None = None) -> None:
        from mmseq.medical.cli import load_reporter, load_tokenizer

        self.settings = settings or Settings()
        tok, rep = self.settings.checkpoints.get("ct-tokenizer"), self.settings.checkpoints.get("ct-report")
        self.tokenizer = LazyModel(lambda: load_tokenizer(tok).eval())
        self.reporter = LazyModel(lambda: load_reporter(rep).eval())
        self.cache = LRUCache(4)

    def process(self, path: str | Path) -> CTResult:
        """Tokenize and reconstruct an upload (once per file content: later calls come from the cache)."""
        from mmseq.medical.io import preprocess
        from mmseq.medical.tokens import detokenize, tokenize_volume, tokenizer_preprocess

        volume = load_volume(path, self.settings)
        key = file_hash(path)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        start = time.perf_counter()
        tokenizer = self.tokenizer.get()
        _, grid = preprocess(volume, tokenizer_preprocess(tokenizer))
        tokens = tokenize_volume(tokenizer, volume, window=ENCODE_WINDOW, source=Path(path).name)
        recon = detokenize(tokenizer, tokens)
        result = CTResult(
            name=Path(path).name, grid=grid.array.numpy().astype(np.float32),
            recon=recon.array.numpy().astype(np.float32), spacing=grid.spacing,
            source_shape=tuple(int(n) for n in volume.shape), source_spacing=volume.spacing,
            token_grid=tuple(int(n) for n in tokens.ids.shape), token_bits=int(tokens.token_bits),
            codes=tokens.codes(), seconds=time.perf_counter() - start)
        self.cache.put(key, result)
        return result

    def report(self, result: CTResult) -> tuple[str, list[str]]:
        """The generated report and the findings it states (kept with the result)."""
        if result.report is None:
            from mmseq.medical.labeler import label_report

            text = self.reporter.get().generate(result.codes[None])[0]
            result.findings = [name for name, present in label_report(text).items() if present]
            result.report = text
        return result.report, result.findings

    def views(self, result: CTResult, preset: str, axial: float, coronal: float, sagittal: float) -> tuple:
        return (draw_view(result, "axial", axial, preset), draw_view(result, "coronal", coronal, preset),
                draw_view(result, "sagittal", sagittal, preset))

    # outputs: axial, coronal, sagittal, stats, status, state, report
    @guarded(7, 4, path_arg=1)
    def on_upload(self, path: str | None, preset: str = "lung", axial: float = 50, coronal: float = 50,
                  sagittal: float = 50) -> tuple:
        if path is None:
            return None, None, None, "", "", None, ""
        r = self.process(path)
        status = ok_status(f"Tokenized {r.name} into {r.n_tokens:,} tokens and decoded it back in {r.seconds:.1f} s.")
        pending = '<p class="mmseq-note">Writing the report...</p>' if r.report is None else \
            report_html(r.report, r.findings)
        return (*self.views(r, preset, axial, coronal, sagittal), stats_html(r), status, r, pending)

    def on_view(self, result: CTResult | None, preset: str, axial: float, coronal: float, sagittal: float) -> tuple:
        if result is None:
            return None, None, None
        return self.views(result, preset, axial, coronal, sagittal)

    def on_report(self, result: CTResult | None) -> str:
        if result is None:
            return ""
        try:
            text, findings = self.report(result)
        except UserError as e:
            return error_status(str(e))
        return report_html(text, findings)


def build_tab(settings: Settings) -> MedicalDemo:
    """Lay the tab out inside the current Blocks/Tab context and wire its events."""
    import gradio as gr

    demo = MedicalDemo(settings)
    gr.Markdown("Tokenize a chest CT with the shipped 3D tokenizer, decode it back, and write a report from the "
                "tokens. Upload a NIfTI volume (.nii, .nii.gz) or a zip of one DICOM series, or pick the example "
                "phantom. Views are on the tokenizer's 4 mm grid.")
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="CT volume", file_types=list(VOLUME_SUFFIXES), type="filepath",
                             elem_id="medical-input")
            gr.Examples([[str(examples_dir() / name)] for name in EXAMPLES], inputs=[upload], label="Example")
            preset = gr.Radio(list(WINDOWS), value="lung", label="HU window", elem_id="medical-window")
            axial = gr.Slider(0, 100, value=50, step=1, label="Axial slice (%)")
            coronal = gr.Slider(0, 100, value=50, step=1, label="Coronal slice (%)")
            sagittal = gr.Slider(0, 100, value=50, step=1, label="Sagittal slice (%)")
            status = gr.HTML(elem_id="medical-status")
            stats = gr.HTML(elem_id="medical-stats")
        with gr.Column(scale=2):
            ax_img = gr.Image(label="Axial: input | from tokens | error", interactive=False, elem_id="medical-axial")
            co_img = gr.Image(label="Coronal", interactive=False, elem_id="medical-coronal")
            sa_img = gr.Image(label="Sagittal", interactive=False, elem_id="medical-sagittal")
            report = gr.HTML(label="Report", elem_id="medical-report")
    state = gr.State(None)
    view_in = [state, preset, axial, coronal, sagittal]
    upload.change(demo.on_upload, [upload, preset, axial, coronal, sagittal],
                  [ax_img, co_img, sa_img, stats, status, state, report]).then(demo.on_report, [state], [report])
    for control in (preset, axial, coronal, sagittal):
        (control.release if isinstance(control, gr.Slider) else control.change)(
            demo.on_view, view_in, [ax_img, co_img, sa_img])
    return demo
