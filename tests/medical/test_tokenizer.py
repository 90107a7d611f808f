"""CT tokenizer: shapes, input checks, causality along depth, windowed encode/decode equal to one piece (float64)
at a peak activation size that does not grow with depth, presets, export round trip, a short training run."""

import pytest
import torch
import yaml
from torch.testing import assert_close

from mmseq.medical.causal3d import CausalCache
from mmseq.medical.haar import haar_dwt3d
from mmseq.medical.tokenizer import PRESETS, CTTokenizer, create_tokenizer, reconstruction_losses

# Tiny variants (a few thousand parameters): name -> constructor arguments. t = slices per latent frame,
# s = pixels per token; "t4s8" has a spatial-only transition first, as the 16x16x8 preset does.
TINY = {
    "t4s4": {"channel_multipliers": [1, 2], "temporal_downsample": [True]},
    "t8s8": {"channel_multipliers": [1, 1, 2], "temporal_downsample": [True, True]},
    "t4s8": {"channel_multipliers": [1, 2, 2], "temporal_downsample": [False, True]},
}


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, and does not stall when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str = "t4s4", seed: int = 0) -> CTTokenizer:
    torch.manual_seed(seed)
    return CTTokenizer(filters=4, num_res_blocks=1, token_bits=6, norm_groups=2, **TINY[name]).double()


def volume(depth: int, size: int = 16, batch: int = 1, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(batch, 1, depth, size, size, dtype=torch.float64) * 2 - 1


def latent(model: CTTokenizer, x: torch.Tensor) -> torch.Tensor:
    """One-piece pre-quantization latent."""
    return model.encoder(haar_dwt3d(x))


# -- shapes and input checks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, t, s", [("t4s4", 4, 4), ("t8s8", 8, 8), ("t4s8", 4, 8)])
def test_shapes(name, t, s):
    model = tiny(name)
    assert (model.depth_factor, model.spatial_factor) == (t, s)
    x = volume(1 + 2 * t, batch=2)
    ids, codes = model.encode(x)
    assert ids.shape == (2, 3, 16 // s, 16 // s) and ids.dtype == torch.int64
    assert codes.shape == (2, 6, 3, 16 // s, 16 // s)
    assert model.latent_shape(1 + 2 * t, 16, 16) == (3, 16 // s, 16 // s)
    assert model.volume_shape(3, 16 // s, 16 // s) == (1 + 2 * t, 16, 16)
    assert model.decode(ids).shape == x.shape
    assert torch.equal(model.decode(ids), model.decode(codes))


def test_a_2d_image_is_a_one_slice_volume():
    model = tiny()
    ids, _ = model.encode(volume(1))
    assert ids.shape == (1, 1, 4, 4)
    assert model.decode(ids).shape == (1, 1, 1, 16, 16)


@pytest.mark.parametrize("shape, match", [
    ((1, 1, 8, 16, 16), r"depth must be 1 \+ k\*4 .* got 8; pad it to 9"),
    ((1, 1, 9, 16, 18), "multiples of 4, got 16x18"),
    ((1, 2, 9, 16, 16), r"\[B, 1, D, H, W\]"),
    ((1, 9, 16, 16), r"\[B, 1, D, H, W\]"),
])
def test_bad_volumes_are_refused(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny().encode(torch.zeros(shape, dtype=torch.float64))


def test_integer_volumes_and_bad_windows_are_refused():
    model = tiny()
    with pytest.raises(TypeError, match="floating-point"):
        model.encode(torch.zeros(1, 1, 5, 16, 16, dtype=torch.int16))
    with pytest.raises(ValueError, match="window must be a positive int"):
        model.encode_windowed(volume(5), 0)
    with pytest.raises(ValueError, match=r"ids must be \[B, d, h, w\]"):
        model.decode(torch.zeros(1, 2, 4, dtype=torch.int64))


def test_pad_volume_reaches_the_next_valid_shape():
    model = tiny("t8s8")
    x = volume(10, size=14)
    padded = model.pad_volume(x)
    assert padded.shape == (1, 1, 17, 16, 16)
    assert torch.equal(padded[..., :10, :14, :14], x)
    assert (padded[..., 10:, :, :] == -1).all() and (padded[..., :, 14:, :] == -1).all()
    assert model.valid_depth(1) == 1 and model.valid_depth(9) == 9 and model.valid_depth(2) == 9


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="one flag per level transition"):
        CTTokenizer(filters=4, channel_multipliers=[1, 2], temporal_downsample=[True, True], norm_groups=2)
    with pytest.raises(ValueError, match="norm_groups=3 must divide"):
        CTTokenizer(filters=4, channel_multipliers=[1, 2], temporal_downsample=[True], norm_groups=3)


# -- causality ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TINY))
def test_encoding_is_causal_along_depth(name):
    model = tiny(name)
    t = model.depth_factor
    x = volume(1 + 4 * t)
    z = latent(model, x)
    for j in range(4):  # latent j sees slices <= j t
        x2 = x.clone()
        x2[:, :, j * t + 1:] = volume(x.shape[2] - j * t - 1, seed=7)
        z2 = latent(model, x2)
        assert_close(z2[:, :, :j + 1], z[:, :, :j + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(z2[:, :, j + 1], z[:, :, j + 1])


@pytest.mark.parametrize("name", list(TINY))
def test_decoding_is_causal_along_depth(name):
    model = tiny(name)
    t = model.depth_factor
    ids = torch.randint(0, 64, (1, 5, 2, 2))
    y = model.decode(ids)
    for j in range(4):  # output slices <= j t come from latents <= j
        ids2 = ids.clone()
        ids2[:, j + 1:] = (ids[:, j + 1:] + 1) % 64
        y2 = model.decode(ids2)
        assert_close(y2[:, :, :j * t + 1], y[:, :, :j * t + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(y2[:, :, j * t + 1:(j + 1) * t + 1], y[:, :, j * t + 1:(j + 1) * t + 1])


# -- windowed = one piece --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("k", [0, 1, 4])  # depth 1 + k t; k = 0 is a 2D slice
def test_windowed_encoding_equals_one_piece(name, k):
    model = tiny(name)
    t = model.depth_factor
    x = volume(1 + k * t, batch=2)
    z = latent(model, x)
    ids, codes = model.encode(x)
    for window in sorted({1, 2, 3, t - 1, t, t + 1, 2 * t + 3, x.shape[2] + 5}):
        zw = model.encode_latent_windowed(x, window)
        assert_close(zw, z, atol=1e-10, rtol=0, msg=lambda m, w=window: f"window {w}: {m}")
        ids_w, codes_w = model.encode_windowed(x, window)
        assert torch.equal(ids_w, ids) and torch.equal(codes_w, codes)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("d", [1, 2, 6])
def test_windowed_decoding_equals_one_piece(name, d):
    model = tiny(name)
    torch.manual_seed(d)
    ids = torch.randint(0, 64, (2, d, 2, 2))
    y = model.decode(ids)
    for window in sorted({1, 2, 3, d, d + 2}):
        assert_close(model.decode_windowed(ids, window), y, atol=1e-10, rtol=0)
    codes = model.quantizer.indices_to_codes(ids, torch.float64)
    assert_close(model.decode_windowed(codes, 2), y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", list(TINY))
def test_windowed_equals_one_piece_in_float32(name):
    # float32 on the CPU runs oneDNN convolutions (CausalConv3d._conv), whatever the chunk size
    model = tiny(name).float()
    t = model.depth_factor
    x = volume(1 + 5 * t).float()
    z = latent(model, x)
    for window in (1, t + 1, 3 * t):
        assert_close(model.encode_latent_windowed(x, window), z, atol=1e-5, rtol=1e-5)
    ids = model.encode(x)[0]
    for window in (1, 2):
        assert_close(model.decode_windowed(ids, window), model.decode(ids), atol=1e-5, rtol=1e-5)


def test_windowed_converts_dtype_and_shows_progress(capsys):
    model = tiny()
    x = volume(9).float()  # a float32 volume through a float64 model, chunk by chunk
    ids, _ = model.encode_windowed(x, 3, progress=True)
    assert torch.equal(ids, model.encode(x.double())[0])
    y = model.decode_windowed(ids, 1, progress=True)
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert "encode" in capsys.readouterr().err


class LargestActivation:
    """Forward hooks on every module: the largest output (in elements) any module produced."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.largest = 0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()]

    def _hook(self, module, args, output):
        if isinstance(output, torch.Tensor):
            self.largest = max(self.largest, output.numel())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_windowed_peak_activation_does_not_grow_with_depth():
    model = tiny("t8s8")
    peaks, one_piece, carried = {}, {}, {}
    for k in (2, 8, 32):
        x = volume(1 + 8 * k)
        with LargestActivation(model) as probe:
            ids = model.encode_windowed(x, 8)[0]
            model.decode_windowed(ids, 1)
        peaks[k] = probe.largest
        with LargestActivation(model) as probe:
            model.decode(model.encode(x)[0])
        one_piece[k] = probe.largest
        cache = CausalCache()
        with torch.no_grad():
            for start in range(0, x.shape[2], 8):
                model.encode_step(x[:, :, start:start + 8], cache)
        carried[k] = cache.nbytes()
    assert peaks[2] == peaks[8] == peaks[32]
    assert carried[2] == carried[8] == carried[32]
    assert one_piece[32] > 8 * peaks[32]  # the one-piece path does grow with depth


# -- presets, export, losses, training ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, encoder, decoder, factors", [
    ("btb3d_8x8x8", 72.5e6, 115.1e6, (8, 8)),  # parameter counts from refs/btb3d.md section 1.3
    ("btb3d_16x16x8", 81.5e6, 127.0e6, (8, 16)),
])
def test_paper_presets(name, encoder, decoder, factors):
    with torch.device("meta"):  # no memory for the weights
        model = CTTokenizer.from_preset(name)
    assert sum(p.numel() for p in model.encoder.parameters()) == pytest.approx(encoder, rel=2e-3)
    assert sum(p.numel() for p in model.decoder.parameters()) == pytest.approx(decoder, rel=2e-3)
    assert (model.depth_factor, model.spatial_factor) == factors
    assert model.init_args["token_bits"] == 18


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ValueError, match=r"did you mean 'btb3d_8x8x8'"):
        create_tokenizer("btb3d_8x8")


def test_export_round_trip(tmp_path):
    preprocess = {"spacing": [1.5, 0.75, 0.75], "hu_min": -1000.0, "hu_max": 1000.0}
    model = CTTokenizer.from_preset("ct_small_4x4x4", filters=8, norm_groups=4, token_bits=8, preprocess=preprocess)
    model.save_pretrained(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["args"]["preprocess"] == preprocess
    assert config["class"] == "mmseq.medical.tokenizer.CTTokenizer"
    assert config["args"]["channel_multipliers"] == PRESETS["ct_small_4x4x4"]["channel_multipliers"]
    assert config["args"]["filters"] == 8 and config["args"]["token_bits"] == 8
    loaded = CTTokenizer.from_pretrained(tmp_path)
    assert loaded.preprocess == preprocess and loaded.init_args["preprocess"] == preprocess
    x = volume(5).float()
    ids, _ = model.encode(x)
    assert torch.equal(loaded.encode(x)[0], ids)
    assert torch.equal(loaded.decode(ids), model.decode(ids))


def test_forward_and_reconstruction_losses():
    model = tiny()
    x = volume(9, batch=2)
    x_hat, aux = model(x, entropy_weight=0.3)
    assert x_hat.shape == x.shape
    for key in ("commitment", "entropy", "per_token_entropy", "batch_entropy", "loss", "perplexity", "usage"):
        assert torch.isfinite(aux[key]), key
    assert torch.equal(aux["ids"], model.encode(x)[0])
    rec = reconstruction_losses(x, x_hat, gradient_weight=1.0)
    assert_close(rec["l1"], (x - x_hat).abs().mean())
    assert_close(rec["loss"], 5.0 * rec["l1"] + rec["ssim"].to(rec["l1"].dtype) + rec["gradient"])
    same = reconstruction_losses(x, x.clone(), gradient_weight=1.0)
    assert same["l1"] == 0 and same["gradient"] == 0 and abs(float(same["ssim"])) < 1e-5
    flat = reconstruction_losses(x[:, :, :1], x_hat[:, :, :1])  # 2D SSIM for a single slice
    assert torch.isfinite(flat["ssim"]) and flat["ssim"] > 0
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_losses(x, x_hat[:, :, :5])


def test_tiled_encoding():
    model = tiny("t4s4")
    x = volume(9, size=32)
    ids, codes = model.encode(x)
    whole = model.encode_tiled(x, (32, 32))  # one tile: exact
    assert torch.equal(whole[0], ids) and torch.equal(whole[1], codes)
    tiled_ids, tiled_codes = model.encode_tiled(x, (16, 16), overlap=0.5, window=4)
    assert tiled_ids.shape == ids.shape and tiled_codes.shape == codes.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode_tiled(x, (10, 16))


def test_small_preset_learns_a_smooth_volume():
    torch.manual_seed(0)
    model = CTTokenizer.from_preset("ct_small_4x4x4")
    d, h, w = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (9, 16, 16)), indexing="ij")
    x = (0.6 * torch.exp(-((h - 0.2) ** 2 + (w + 0.1) ** 2 + (0.5 * d) ** 2) / 0.3)
         - 0.5 * torch.exp(-((h + 0.4) ** 2 + (w - 0.4) ** 2) / 0.1) + 0.2 * torch.sin(3 * d + 2 * w))[None, None]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.0, 0.99))
    l1 = []
    for _ in range(40):
        x_hat, aux = model(x)
        rec = reconstruction_losses(x, x_hat, ssim_weight=0.0)
        opt.zero_grad()
        (rec["loss"] + aux["loss"]).backward()
        opt.step()
        l1.append(rec["l1"].item())
    assert min(l1[-5:]) < 0.7 * l1[0], l1
