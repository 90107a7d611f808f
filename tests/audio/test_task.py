"""The keywords task through the runner: it learns, writes its metrics and confusion matrix, and classifies."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from mmseq.audio.io import load_audio, save_audio
from mmseq.cli import main
from mmseq.runner.train import train

WORDS = ["yes", "no", "up", "down"]


def _config(tmp_path: Path, root: Path, steps: int = 250, **data) -> Path:
    extra = "".join(f", {k}: {v}" for k, v in data.items())
    cfg = tmp_path / "kw.yaml"
    cfg.write_text(
        "task: keywords\nseed: 0\n"
        f"data: {{root: {root}, format: folder, batch_size: 32, eval_batch_size: 64{extra}, "
        "augment: {p_noise: 0.5, snr_db: [10.0, 30.0], gain_db: [-10.0, 3.0], p_reverb: 0.0, p_speed: 0.0}}\n"
        "model: {frontend: {name: logmel, n_mels: 32}, d_model: 32, n_layers: 2, mlp_ratio: 1.0, dropout: 0.0, "
        "mixer: {name: s4d, d_state: 16}}\n"
        "optim: {lr: 5.0e-3, warmup_steps: 20}\n"
        f"trainer: {{max_steps: {steps}, val_check_interval: 125, checkpoint_every_n_steps: 125, "
        "log_every_n_steps: 25, enable_progress_bar: false}\n"
    )
    return cfg


@pytest.fixture(scope="module")
def trained_run(tiny_keywords, tmp_path_factory):
    """One short training run on the tiny built-in set, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("kwrun")
    run_dir = tmp / "run"
    # The generated set is in Speech Commands layout; the generic folder reader takes its 4 word folders as
    # the classes (the Speech Commands reader wants a whole word set, sc10 or sc35).
    metrics = train(_config(tmp, tiny_keywords), run_dir=run_dir)
    return run_dir, metrics


def test_training_beats_chance_by_a_wide_margin(trained_run):
    run_dir, metrics = trained_run
    chance = 1 / len(WORDS)
    # Unseen voices (the folder reader splits by speaker hash); chance is 0.25.
    assert metrics["val"]["val/acc"] > chance + 0.35, metrics
    assert metrics["test"]["test/acc"] > chance + 0.35, metrics
    assert 0 < metrics["test"]["test/f1"] <= 1


def test_run_folder_has_confusion_matrix_png_and_counts(trained_run):
    run_dir, _ = trained_run
    png = run_dir / "confusion_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((run_dir / "confusion_test.json").read_text())
    assert data["labels"] == sorted(WORDS)
    matrix = torch.tensor(data["matrix"])
    assert matrix.shape == (4, 4) and int(matrix.sum()) > 0
    cfg = yaml.safe_load((run_dir / "model" / "config.yaml").read_text())
    # The exported model is the model alone: its class and the arguments inference needs, no data or trainer.
    assert cfg["class"] == "mmseq.audio.model.AudioClassifier" and set(cfg) == {"class", "args", "format"}
    assert cfg["args"]["labels"] == sorted(WORDS) and cfg["args"]["num_classes"] == 4
    assert cfg["args"]["clip_seconds"] == 1.0 and cfg["args"]["sample_rate"] == 16000


def test_streaming_classification_matches_the_batch_model(trained_run, tiny_keywords):
    from mmseq.runner.pretrained import from_pretrained

    run_dir, _ = trained_run
    model = from_pretrained(run_dir).double()
    clip = next((tiny_keywords / "yes").glob("*.wav"))
    wave = load_audio(clip).double()[None]
    full = model(wave)
    state = model.init_stream(1)
    for start in range(0, wave.shape[1], 1000):  # 62.5 ms chunks, as audio would arrive
        logits, state = model.stream(wave[:, start:start + 1000], state)
    torch.testing.assert_close(logits, full, rtol=1e-7, atol=1e-9)


def test_eval_and_classify_audio_cli(trained_run, tiny_keywords, run_cli, tmp_path):
    run_dir, _ = trained_run
    r = run_cli("eval", str(run_dir), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout[r.stdout.index("{"):])
    # eval scores the exported (best) weights on the same data: it reproduces the training run's final figures
    trained = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        for key, value in trained[split].items():
            assert result[split][key] == pytest.approx(value, abs=1e-5), key
    clips = [next((tiny_keywords / w).glob("*.wav")) for w in WORDS]
    # A long clip: 3 s of near-silence with the word in the middle, stereo at 44.1 kHz.
    word = load_audio(clips[0], 44100)
    long = torch.zeros(2, 3 * 44100)
    long[:, 44100:44100 + word.shape[0]] = word
    long_path = save_audio(tmp_path / "long.flac", long + 1e-4 * torch.randn_like(long), 44100)
    r = run_cli("classify-audio", *map(str, clips), str(long_path), "--checkpoint", str(run_dir), "--json",
                "--top-k", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["file"] for o in out] == [*map(str, clips), str(long_path)]
    for o in out:
        assert o["best_guess"] in WORDS and len(o["top_k"]) == 2
        assert o["top_k"][0]["score"] >= o["top_k"][1]["score"]
        assert o["label"] in (o["best_guess"], "_unknown_")
    assert out[-1]["duration_s"] == pytest.approx(3.0, abs=0.01)
    assert 0.3 <= out[-1]["window_start_s"] <= 1.8  # the window that holds the word, not the silence
    plain = run_cli("classify-audio", str(clips[0]), "--checkpoint", str(run_dir), cwd=tmp_path)
    assert plain.returncode == 0 and str(clips[0]) in plain.stdout


def _main(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in this process (the subprocess tests above cover the installed command)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


def test_classify_audio_bad_input_is_one_line(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    code, err = _main(capsys, "classify-audio", str(bad), "--checkpoint", str(run_dir))
    assert code == 2 and "notes.wav" in err
    code, err = _main(capsys, "classify-audio", str(bad), "--checkpoint", str(tmp_path))
    assert code == 2 and "no exported model" in err
    code, err = _main(capsys, "classify-audio", str(bad), "--checkpoint", str(run_dir), "--threshold", "2")
    assert code == 2 and "--threshold" in err


def test_config_errors_name_the_key(tmp_path, capsys):
    cfg = str(_config(tmp_path, tmp_path / "missing"))
    code, err = _main(capsys, "train", cfg, "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "data.root" in err and "mmseq data make keywords" in err
    code, err = _main(capsys, "train", cfg, "model.frontend.name=melspec")
    assert code == 2 and "model.frontend.name" in err and "logmel" in err
    code, err = _main(capsys, "train", cfg, "data.augment.snr=3")
    assert code == 2 and "data.augment" in err
    assert not (tmp_path / "r").exists()  # nothing written before the config is valid


def test_robustness_benchmark_runs(trained_run, tiny_keywords, repo_root, capsys):
    import importlib.util
    import warnings

    spec = importlib.util.spec_from_file_location("keyword_robustness", repo_root / "benchmarks" /
                                                  "keyword_robustness.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run_dir, _ = trained_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 4-word set lacks most SC35 folders
        assert bench.main(["--checkpoint", str(run_dir), "--root", str(tiny_keywords), "--limit", "8"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "condition" not in line]
    assert len(rows) == len(bench.CONDITIONS)
    clean = float(rows[0].split("|")[2])
    assert clean > 0.5  # the trained model on its own clean test clips


class _Oracle(torch.nn.Module):
    """Predicts the class index stored in the first sample of each clip."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, wave):
        return torch.nn.functional.one_hot(wave[:, 0].round().long(), self.n).float() * 10 + self.dummy


def test_metrics_accuracy_f1_and_sc10_subset(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from mmseq.audio.labels import SC10, SC35, SILENCE
    from mmseq.audio.tasks import AudioClassificationModule

    labels = [*SC35, SILENCE]
    gen = torch.Generator().manual_seed(0)
    truth = torch.randint(0, len(labels), (400,), generator=gen)
    preds = torch.where(torch.rand(400, generator=gen) < 0.7, truth, torch.randint(0, len(labels), (400,),
                                                                                     generator=gen))
    waves = torch.zeros(400, 160)
    waves[:, 0] = preds.float()
    module = AudioClassificationModule(_Oracle(len(labels)), {"lr": 1e-3}, 1, labels, augment=None)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         default_root_dir=str(tmp_path), accelerator="cpu")
    out = trainer.test(module, DataLoader(TensorDataset(waves, truth), batch_size=64), verbose=False)[0]
    assert out["test/acc"] == pytest.approx(float((preds == truth).float().mean()), abs=1e-6)
    sc10 = torch.isin(truth, torch.tensor([labels.index(w) for w in SC10]))
    assert out["test/acc_sc10"] == pytest.approx(float((preds == truth)[sc10].float().mean()), abs=1e-6)
    f1 = []
    for c in range(len(labels)):  # every class occurs among 400 draws
        tp = ((preds == c) & (truth == c)).sum().item()
        fp = ((preds == c) & (truth != c)).sum().item()
        fn = ((preds != c) & (truth == c)).sum().item()
        f1.append(2 * tp / (2 * tp + fp + fn))
    assert out["test/f1"] == pytest.approx(sum(f1) / len(f1), abs=1e-5)
    assert (tmp_path / "confusion_test.png").is_file()
