"""The audio tab: classify a clip with the keyword model; waveform, log-mel spectrogram, top-k labels, and for
clips longer than the model's window, the label over time from streaming classification."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmseq.errors import UserError

from .common import (
    LazyModel,
    Settings,
    check_upload,
    error_status,
    examples_dir,
    figure_to_array,
    guarded,
    new_figure,
    ok_status,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".webm", ".m4a")
EXAMPLES = ("keywords.wav",)
TOP_K = 5
CHUNK_SECONDS = 0.1  # streaming: samples arrive in chunks this long


@dataclass
class AudioResult:
    name: str
    wave: np.ndarray  # [T] float32 at the model's rate
    sample_rate: int
    top_k: dict[str, float]  # label -> probability, best first (the clip's most confident window)
    window_start_s: float
    timeline: list[tuple[float, str, float]] = field(default_factory=list)  # (time s, label, probability)
    seconds: float = 0.0

    @property
    def duration(self) -> float:
        return len(self.wave) / self.sample_rate


def stream_timeline(model, wave, chunk_seconds: float = CHUNK_SECONDS) -> list[tuple[float, str, float]]:
    """Label over time from streaming classification: what a stream answers as each ``chunk_seconds`` arrives.

    A stream's answer pools everything it heard, so one stream over a long clip would blur its words together.
    So a new stream starts every half window (the model's ``clip_seconds``) and each lives for one window; after
    each chunk the oldest live stream, which has heard between half a window and a whole one, gives the label.

    A causal model's stream answers, after n frames, what its forward pass gives on those n frames, so each
    stream's answers are computed in one forward pass over its window (``model.encode`` then the running pool)
    instead of frame by frame: the same numbers (tests/apps check them against ``model.stream``), many times
    faster on a CPU.
    """
    import torch

    sr = model.sample_rate
    chunk = max(1, round(chunk_seconds * sr))
    life = max(chunk, round(model.clip_seconds * sr))
    half = max(chunk, life // 2)
    x = torch.as_tensor(wave, dtype=torch.float32)
    answers: dict[int, torch.Tensor] = {}  # stream start -> probabilities after each frame [L, C]
    out: list[tuple[float, str, float]] = []
    with torch.no_grad():
        for pos in range(0, x.shape[0], chunk):
            end = min(pos + chunk, x.shape[0])
            start = max(0, -(-(end - life) // half)) * half  # the oldest stream still live at ``end``
            n = model.frontend.num_frames(end - start)
            if n == 0:
                continue
            if start not in answers:
                h = model.encode(x[start:start + life][None])[0]  # [L, D]
                steps = torch.arange(1, h.shape[0] + 1, dtype=h.dtype)[:, None]
                pooled = {"mean": h.cumsum(0) / steps, "max": h.cummax(0).values, "last": h}[model.pool]
                answers = {start: model.head(pooled).softmax(-1)}  # earlier streams are over
            p = answers[start][min(n, answers[start].shape[0]) - 1]
            best = int(p.argmax())
            out.append((end / sr, model.labels[best], float(p[best])))
    return out


def draw_signal(result: AudioResult) -> np.ndarray:
    """Waveform above its log-mel spectrogram, on one time axis."""
    import torch
    import torchaudio

    wave = torch.from_numpy(result.wave)
    mel = torchaudio.transforms.MelSpectrogram(result.sample_rate, n_fft=400, hop_length=160, n_mels=64)(wave)
    logmel = (mel + 1e-10).log10().mul(10).numpy()
    t = np.arange(len(result.wave)) / result.sample_rate
    fig = new_figure(9, 4.2)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.6]})
    ax1.plot(t, result.wave, lw=0.5, color="#1f4e79")
    ax1.set_ylim(-1, 1)
    ax1.set_ylabel("amplitude")
    ax1.set_title(f"{result.name}: {result.duration:.2f} s at {result.sample_rate} Hz", fontsize=10)
    vmax = float(logmel.max())
    ax2.imshow(logmel, origin="lower", aspect="auto", cmap="magma", vmin=vmax - 80, vmax=vmax,
               extent=(0, result.duration, 0, logmel.shape[0]))
    ax2.set_ylabel("mel band")
    ax2.set_xlabel("time (s)")
    fig.tight_layout()
    return figure_to_array(fig)


def draw_timeline(result: AudioResult, silence: str = "_silence_") -> np.ndarray | None:
    """The streaming label over time: one coloured band per run of the same label, probability as a line."""
    if not result.timeline:
        return None
    import matplotlib

    times = np.array([t for t, _, _ in result.timeline])
    labels = [lab for _, lab, _ in result.timeline]
    probs = np.array([p for _, _, p in result.timeline])
    names = [n for n in dict.fromkeys(labels) if n != silence]
    cmap = matplotlib.colormaps["tab10"]
    colors = {n: cmap(i % 10) for i, n in enumerate(names)}
    colors[silence] = (0.85, 0.85, 0.85, 1.0)
    fig = new_figure(9, 2.0)
    ax = fig.subplots()
    step = np.diff(times, prepend=0.0)
    run_start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[run_start]:
            x0, x1 = times[run_start] - step[run_start], times[i - 1]
            ax.axvspan(x0, x1, color=colors[labels[run_start]], alpha=0.8)
            if labels[run_start] != silence and x1 - x0 >= 0.15:
                ax.text((x0 + x1) / 2, 0.5, labels[run_start], ha="center", va="center", fontsize=10,
                        fontweight="bold")
            run_start = i
    ax.plot(times, probs, color="black", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, result.duration)
    ax.set_ylabel("probability")
    ax.set_xlabel("time (s); grey: silence")
    ax.set_title("label over time (streaming)", fontsize=10)
    fig.tight_layout()
    return figure_to_array(fig)


class AudioDemo:
    """The tab's work, callable without a browser: ``on_upload(path)``."""

    def __init__(self, settings: Settings | None = None) -> None:
        from mmseq.audio.classify import load_classifier

        self.settings = settings or Settings()
        checkpoint = self.settings.checkpoints.get("audio")
        self.model = LazyModel(lambda: load_classifier(checkpoint))

    def classify(self, path: str | Path) -> AudioResult:
        from mmseq.audio.classify import best_window_probs
        from mmseq.audio.io import load_audio

        p = check_upload(path, AUDIO_SUFFIXES, "an audio clip", self.settings)
        model = self.model.get()
        start = time.perf_counter()
        wave = load_audio(p, model.sample_rate, max_seconds=self.settings.max_audio_seconds)
        probs, window_start = best_window_probs(model, wave)
        scores, idx = probs.topk(min(TOP_K, len(model.labels)))
        top = {model.labels[i]: float(s) for s, i in zip(scores.tolist(), idx.tolist())}
        timeline = stream_timeline(model, wave) if wave.shape[0] > model.clip_seconds * model.sample_rate else []
        return AudioResult(p.name, wave.numpy(), model.sample_rate, top, window_start, timeline,
                           time.perf_counter() - start)

    @staticmethod
    def summary(r: AudioResult) -> str:
        best, score = next(iter(r.top_k.items()))
        where = f" (the window at {r.window_start_s:.2f} s)" if r.duration > 1.0 else ""
        words = [lab for lab in dict.fromkeys(lab for _, lab, _ in r.timeline) if lab != "_silence_"]
        heard = f" Over time: {', '.join(words)}." if words else ""
        return (f"{r.name}: {best} ({100 * score:.0f}%){where}; {r.duration:.2f} s classified in {r.seconds:.1f} s."
                f"{heard}")

    # outputs: signal image, top-k label, timeline image, status
    @guarded(4, 3, path_arg=1)
    def on_upload(self, path: str | None) -> tuple:
        if path is None:
            return None, None, None, ""
        r = self.classify(path)
        return draw_signal(r), r.top_k, draw_timeline(r), ok_status(self.summary(r))


def build_tab(settings: Settings) -> AudioDemo:
    import gradio as gr

    demo = AudioDemo(settings)
    try:
        demo.model.get()
        first_status = ""
    except UserError as e:
        first_status = error_status(str(e))
    gr.Markdown("Classify a spoken keyword with the shipped keyword model (the 35 Speech Commands words). Upload "
                "or record a clip, or pick the example (three words). Clips longer than one second are scanned: "
                "the top labels come from the most confident window, and the timeline shows the label over time "
                "from streaming classification.")
    with gr.Row():
        with gr.Column(scale=1):
            clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip", elem_id="audio-input")
            gr.Examples([[str(examples_dir() / name)] for name in EXAMPLES], inputs=[clip], label="Example")
            status = gr.HTML(first_status, elem_id="audio-status")
            top = gr.Label(num_top_classes=TOP_K, label="Top labels", elem_id="audio-topk")
        with gr.Column(scale=2):
            signal = gr.Image(label="Waveform and log-mel spectrogram", interactive=False, elem_id="audio-signal")
            timeline = gr.Image(label="Label over time", interactive=False, elem_id="audio-timeline")
    clip.change(demo.on_upload, [clip], [signal, top, timeline, status])
    return demo
