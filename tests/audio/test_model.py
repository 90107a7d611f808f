"""Front ends and the audio classifier: frame locality, streaming == full forward, shapes and errors."""

import pytest
import torch

from mmseq.audio.frontends import FRONTENDS, create_frontend
from mmseq.audio.model import AudioClassifier


@pytest.mark.parametrize("name", ["logmel", "mfcc", "raw"])
def test_frontend_frames_are_local(name):
    """Frame k depends only on samples [k*hop, k*hop + window): a prefix or an offset slice reproduces frames."""
    fe = create_frontend(name, 16000, **({"patch_size": 40} if name == "raw" else {})).double()
    wave = torch.randn(2, 4000, dtype=torch.float64)
    full = fe(wave)
    assert full.shape == (2, fe.num_frames(4000), fe.out_dim)
    prefix = fe(wave[:, :1234])
    torch.testing.assert_close(prefix, full[:, : prefix.shape[1]], rtol=0, atol=1e-10)
    k = 3
    shifted = fe(wave[:, k * fe.hop:])
    torch.testing.assert_close(shifted, full[:, k: k + shifted.shape[1]], rtol=0, atol=1e-10)


def test_mfcc_is_dct_of_logmel():
    mfcc = create_frontend("mfcc", 16000, n_mfcc=13, n_mels=40).double()
    logmel = create_frontend("logmel", 16000, n_mels=40).double()
    wave = torch.randn(1, 8000, dtype=torch.float64)
    lm = logmel(wave)  # [1, L, 40]
    n = torch.arange(40, dtype=torch.float64)
    k = torch.arange(13, dtype=torch.float64)[:, None]
    dct = torch.cos(torch.pi / 40 * (n + 0.5) * k) * torch.sqrt(torch.tensor(2 / 40, dtype=torch.float64))
    dct[0] /= torch.sqrt(torch.tensor(2.0, dtype=torch.float64))
    # torchaudio builds the DCT matrix in float32, hence the tolerance.
    torch.testing.assert_close(mfcc(wave), lm @ dct.T, rtol=1e-5, atol=1e-4)


def test_raw_patches_are_the_waveform():
    fe = create_frontend("raw", 16000, patch_size=4)
    wave = torch.arange(18, dtype=torch.float32)[None]
    out = fe(wave)
    assert out.shape == (1, 4, 4)
    assert out[0, 1].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_unknown_frontend_names_choices():
    with pytest.raises(ValueError, match="logmel"):
        create_frontend("melspec", 16000)
    assert {"logmel", "mfcc", "raw"} <= set(FRONTENDS.names())


def _model(mixer, frontend, **kw):
    torch.manual_seed(0)
    m = AudioClassifier(5, frontend=frontend, d_model=16, n_layers=2, mixer=mixer, mlp_ratio=1.0, **kw)
    with torch.no_grad():  # non-trivial feature statistics, so a normalisation mismatch would show
        m.feature_norm.running_mean.normal_()
        m.feature_norm.running_var.uniform_(0.5, 2.0)
    return m.double().eval()


@pytest.mark.parametrize("mixer", [{"name": "mamba", "d_state": 4}, {"name": "s4d", "d_state": 8},
                                   {"name": "sgconv", "l_max": 64}, {"name": "attention", "n_heads": 2}],
                         ids=lambda m: m["name"])
@pytest.mark.parametrize("frontend", [{"name": "logmel", "n_mels": 16}, {"name": "raw", "patch_size": 80}],
                         ids=lambda f: f["name"])
@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_streaming_equals_full_forward(mixer, frontend, pool):
    model = _model(mixer, frontend, pool=pool)
    wave = 0.1 * torch.randn(2, 4000, dtype=torch.float64)
    full = model(wave)
    state = model.init_stream(2)
    gen = torch.Generator().manual_seed(0)
    i, out, seen_none = 0, None, False
    while i < wave.shape[1]:
        n = int(torch.randint(1, 900, (1,), generator=gen))
        logits, state = model.stream(wave[:, i:i + n], state)
        seen_none |= logits is None
        out = logits if logits is not None else out
        i += n
    assert state.frames == model.frontend.num_frames(4000)
    torch.testing.assert_close(out, full, rtol=1e-7, atol=1e-9)


def test_streaming_gives_nothing_before_the_first_frame_and_needs_eval():
    model = _model({"name": "s4d", "d_state": 8}, {"name": "logmel", "n_mels": 16})
    state = model.init_stream(1)
    logits, state = model.stream(torch.zeros(1, 100, dtype=torch.float64), state)
    assert logits is None and state.frames == 0
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        model.stream(torch.zeros(1, 500, dtype=torch.float64), state)


def test_noncausal_model_cannot_stream_and_is_not_causal():
    model = AudioClassifier(3, d_model=16, n_layers=1, mixer={"name": "attention", "n_heads": 2}, causal=False)
    with pytest.raises(ValueError, match="causal"):
        model.init_stream(1)
    model.eval()
    wave = torch.randn(1, 8000)
    base = model.encode(wave)
    changed = wave.clone()
    changed[:, 6000:] += 1.0
    # Noncausal: early frames see the change at the end.
    assert not torch.allclose(model.encode(changed)[:, :5], base[:, :5])


def test_short_clip_and_bad_shapes():
    model = AudioClassifier(4, d_model=16, n_layers=1, mixer={"name": "s4d", "d_state": 8}).eval()
    assert model(torch.zeros(3, 50)).shape == (3, 4)  # shorter than one window: one padded frame
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        model(torch.zeros(16000))
    with pytest.raises(ValueError, match="pool"):
        AudioClassifier(4, pool="avg")
    with pytest.raises(ValueError, match="labels"):
        AudioClassifier(4, labels=["a", "b"])


def test_spec_augment_masks_only_in_training():
    model = AudioClassifier(4, d_model=16, n_layers=1, mixer={"name": "s4d", "d_state": 8}, freq_mask=10,
                            time_mask=20)
    wave = torch.randn(8, 16000)
    model.train()
    torch.manual_seed(0)
    masked = model.features(wave)
    assert (masked == 0).any()
    model.eval()
    assert not (model.features(wave) == 0).any()
