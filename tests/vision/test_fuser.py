import pytest
import torch
import torch.nn.functional as F

from mmseq.vision.fuser import MTEnhancer, MVFuser


def loop_reference(fuser: MVFuser, tokens: torch.Tensor) -> torch.Tensor:
    """MVFuser's forward written out in float64 with a Python loop over positions for the scan."""
    p = {k: v.detach().double() for k, v in fuser.state_dict().items()}
    x = tokens.double() @ p["in_proj.weight"].T  # [B, L, E]
    half = x.shape[-1] // 2
    xs, z = x[..., :half], x[..., half:]

    def same_conv(v, w):  # v [B, L, H], w [H, 1, K]: y[t] = sum_j w[j] v[t + j - K//2], zero outside
        k = w.shape[-1]
        pad = F.pad(v.transpose(1, 2), (k // 2, k // 2))
        return torch.stack([(pad[:, :, t:t + k] * w[:, 0]).sum(-1) for t in range(v.shape[1])], -1).transpose(1, 2)

    xs = F.silu(same_conv(xs, p["conv_x.weight"]))
    z = F.silu(same_conv(z, p["conv_z.weight"]))
    n = p["ssm.A_log"].shape[1]
    r = p["ssm.dt_proj.weight"].shape[1]
    dbl = xs @ p["ssm.x_proj.weight"].T
    dt, Bm, Cm = dbl[..., :r], dbl[..., r:r + n], dbl[..., r + n:]
    delta = F.softplus(dt @ p["ssm.dt_proj.weight"].T + p["ssm.dt_proj.bias"])  # [B, L, H]
    A = -torch.exp(p["ssm.A_log"])  # [H, N]
    h = torch.zeros(xs.shape[0], half, n, dtype=torch.float64)
    ys = []
    for t in range(xs.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * xs[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + p["ssm.D"] * xs[:, t])
    y = torch.stack(ys, 1)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * p["norm.weight"] * F.silu(z)
    return p["scale"] * (y @ p["out_proj.weight"].T)


@pytest.mark.parametrize("impl", ["ref", "torch"])
def test_mvfuser_matches_a_float64_loop(impl):
    torch.manual_seed(0)
    fuser = MVFuser(32, d_state=4, dropout=0.0, scale_init=0.5, impl=impl).eval()
    tokens = torch.randn(2, 23, 32)
    out = fuser(tokens)
    ref = loop_reference(fuser, tokens)
    assert out.shape == (2, 23, 32)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_official_scan_order_dino_half_sees_only_itself():
    # One forward scan over [dino, clip]: the DINOv2 tokens' updates do not depend on the CLIP tokens, except the
    # last DINOv2 token, which the k=3 'same' conv lets see the first CLIP token.
    torch.manual_seed(0)
    fuser = MVFuser(16, d_state=4, dropout=0.0, scale_init=1.0).eval()
    dino, clip = torch.randn(1, 10, 16), torch.randn(1, 12, 16)
    a = fuser(torch.cat([dino, clip], 1))
    b = fuser(torch.cat([dino, torch.randn_like(clip)], 1))
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_fuse_adds_updates_back_into_each_stream_and_starts_small():
    torch.manual_seed(0)
    fuser = MVFuser(16, d_state=4).eval()
    dino, clip = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    new_dino, new_clip = fuser.fuse(dino, clip)
    update = fuser(torch.cat([dino, clip], 1))
    torch.testing.assert_close(new_dino, dino + update[:, :5])
    torch.testing.assert_close(new_clip, clip + update[:, 5:])
    # scale starts at 1e-3: a fresh fuser barely moves the pretrained features
    assert update.abs().max() < 1e-2 * torch.cat([dino, clip], 1).abs().max()


@pytest.mark.parametrize("mixer", [None, {"name": "attention", "n_heads": 2}, {"name": "hyena"}, {"name": "s4d"}])
def test_mixer_swap_and_gradient_flow(mixer):
    torch.manual_seed(0)
    fuser = MVFuser(16, d_state=4, mixer=mixer, scale_init=1.0)
    tokens = torch.randn(2, 9, 16, requires_grad=True)
    fuser(tokens).square().sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    for name, p in fuser.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_mvfuser_rejects_bad_sizes():
    with pytest.raises(ValueError, match="even"):
        MVFuser(3, expand=1)
    with pytest.raises(ValueError, match="odd"):
        MVFuser(16, d_conv=4)


def test_mtenhancer_shapes_reads_the_image_and_trains():
    torch.manual_seed(0)
    enh = MTEnhancer(text_dim=24, visual_dim=40, width=16, num_heads=2, d_state=4, dropout=0.0, gamma_init=1.0)
    text, visual = torch.randn(2, 5, 24), torch.randn(2, 30, 40)
    out = enh(text, visual)
    assert out.shape == (2, 5, 24)
    # the text depends on the image: [text, image, text] lets every text token see the image tokens
    other = enh(text, torch.randn_like(visual))
    assert (out - other).abs().max() > 1e-4
    out.square().sum().backward()
    for name, p in enh.named_parameters():
        assert p.grad is not None, name


def test_mtenhancer_starts_as_a_small_correction():
    torch.manual_seed(0)
    enh = MTEnhancer(text_dim=24, visual_dim=40, width=16, num_heads=2, d_state=4)
    text = torch.randn(2, 5, 24)
    out = enh.eval()(text, torch.randn(2, 30, 40))
    assert (out - text).abs().max() < 1e-2
