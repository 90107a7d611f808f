"""The optional LPIPS term: loading the released layouts, a float64 reference, slices of CT volumes, training."""

from __future__ import annotations

import copy
import csv
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from mmseq.errors import ConfigError, UserError
from mmseq.medical.perceptual import LPIPS, NETS, check_lpips_files, load_lpips, save_lpips, slice_lpips
from mmseq.medical.tokenizer import reconstruction_losses

CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}  # LPIPS' per-tap widths


def tv_features(tv_name: str) -> nn.Sequential:
    """torchvision's ``features`` of ``tv_name`` (weights=None), random: built on the meta device so the large
    classifier is never initialised, then given storage and a He init with non-zero biases."""
    with torch.device("meta"):
        features = getattr(torchvision.models, tv_name)(weights=None).features
    features = features.to_empty(device="cpu").eval()
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return features


@pytest.fixture(scope="module")
def nets() -> dict[str, tuple[nn.Sequential, list[torch.Tensor]]]:
    """net -> (torchvision's randomly initialised ``features``, random non-negative lin weights [1, C_l, 1, 1])."""
    torch.manual_seed(0)
    return {net: (tv_features(tv_name), [torch.rand(1, c, 1, 1) * 0.1 for c in CHANNELS[net]])
            for net, tv_name in (("alex", "alexnet"), ("vgg", "vgg16"))}


def released_files(tmp_path: Path, net: str, features: nn.Sequential, lins: list[torch.Tensor]) -> tuple[Path, Path]:
    """The two released layouts: lpips' lin file and torchvision's state dict (one classifier key, ignored)."""
    lin_file = tmp_path / f"{net}_lin.pth"
    torch.save({f"lin{i}.model.1.weight": w for i, w in enumerate(lins)}, lin_file)
    backbone = {f"features.{k}": v for k, v in features.state_dict().items()}
    backbone["classifier.6.bias"] = torch.zeros(1000)
    backbone_file = tmp_path / f"{net}_backbone.pth"
    torch.save(backbone, backbone_file)
    return lin_file, backbone_file


def sliced(features: nn.Sequential, net: str = "alex") -> dict[str, torch.Tensor]:
    """``features``' state dict under the lpips package's slice names (``slice<k>.<i>.weight``)."""
    out = {}
    for key, value in features.state_dict().items():
        i = int(key.split(".")[0])
        out[f"slice{1 + sum(i >= e for e in NETS[net][1])}.{key}"] = value
    return out


def reference_lpips(features: nn.Sequential, lins: list[torch.Tensor], ends: tuple[int, ...], x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """LPIPS in float64 by hand, as the lpips package computes it: x, y [N, 3, H, W] -> [N]."""
    net = copy.deepcopy(features).double()
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    hx, hy = (x.double() - shift) / scale, (y.double() - shift) / scale
    taps = {e - 1: i for i, e in enumerate(ends)}
    with torch.no_grad():
        for idx, layer in enumerate(net[:ends[-1]]):
            hx, hy = layer(hx), layer(hy)
            if idx in taps:
                nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                d = F.conv2d((nx - ny) ** 2, lins[taps[idx]].double())
                total += d.mean((1, 2, 3))
    return total


def images(n: int = 2, c: int = 3, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=gen) * 2 - 1
    return x, (x + 0.3 * torch.randn(n, c, size, size, generator=gen)).clamp(-1, 1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_released_two_file_layout_matches_a_float64_reference(nets, net, tmp_path):
    features, lins = nets[net]
    lin_file, backbone_file = released_files(tmp_path, net, features, lins)
    model = load_lpips(lin_file, backbone_file, net=net)
    x, y = images()
    got = model(x, y)
    want = reference_lpips(features, lins, NETS[net][1], x, y)
    assert got.shape == (2,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-7)
    assert (want > 0).all()


def test_one_combined_file_loads_the_same_model(nets, tmp_path):
    features, lins = nets["alex"]
    two = load_lpips(*released_files(tmp_path, "alex", features, lins), net="alex")
    x, y = images()
    want = two(x, y)
    for name in ("both.safetensors", "both.pt"):
        path = save_lpips(two, tmp_path / name)
        keys = set(load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True))
        assert {"features.0.weight", "features.0.bias", "lin4.model.1.weight"} <= keys  # the released key names
        assert torch.equal(load_lpips(path, net="alex")(x, y), want)
    # An lpips.LPIPS module's own state dict: backbone under net.slice<k>, a lin conv without its dropout.
    state = {f"net.{k}": v for k, v in sliced(features).items()}
    state.update({f"lin{i}.model.0.weight": w for i, w in enumerate(lins)})
    state["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    save_file(state, tmp_path / "module.safetensors")
    assert torch.equal(load_lpips(tmp_path / "module.safetensors", net="alexnet")(x, y), want)


def test_lpips_is_zero_on_equal_images_symmetric_and_reads_grey(nets, tmp_path):
    model = load_lpips(*released_files(tmp_path, "alex", *nets["alex"]), net="alex")
    x, y = images()
    assert torch.equal(model(x, x), torch.zeros(2))
    torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-6, atol=0)
    g, h = images(c=1, seed=2)
    assert torch.equal(model(g, h), model(g.expand(-1, 3, -1, -1), h.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        model(x, y[:, :1])


def test_gradient_reaches_the_inputs_and_never_the_frozen_weights(nets, tmp_path):
    model = load_lpips(*released_files(tmp_path, "alex", *nets["alex"]), net="alex")
    model.train()  # a surrounding module's .train() leaves it in eval mode
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, y = images()
    x.requires_grad_(True)
    model(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_released_lin_file_and_torchmetrics_agree(nets, tmp_path):
    """The lin file torchmetrics ships is the lpips package's weights/v0.1/alex.pth (a legacy-format file saved from
    CUDA tensors); with one random backbone in both, our LPIPS equals torchmetrics' implementation."""
    import torchmetrics
    from torchmetrics.functional.image.lpips import _LPIPS

    lin_file = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"
    if not lin_file.is_file():
        pytest.skip("this torchmetrics ships no LPIPS lin weights")
    features, _ = nets["alex"]
    ref = _LPIPS(pretrained=True, net="alex", pnet_rand=True)  # lin weights from its file; no backbone download
    ref.net.load_state_dict(sliced(features))
    save_file({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "alexnet.safetensors")
    model = load_lpips(lin_file, tmp_path / "alexnet.safetensors", net="alex")
    x, y = images()
    torch.testing.assert_close(model(x, y), ref(x, y).flatten(), rtol=1e-5, atol=1e-7)


def test_bad_files_are_one_line_errors(nets, tmp_path):
    features, lins = nets["alex"]
    lin_file, backbone_file = released_files(tmp_path, "alex", features, lins)
    partial = {f"features.{k}": v for k, v in features.state_dict().items() if k != "3.weight"}
    torch.save(partial, tmp_path / "partial.pth")
    (tmp_path / "text.pth").write_text("not a state dict")
    (tmp_path / "text.safetensors").write_text("not safetensors")
    torch.save([1, 2], tmp_path / "list.pth")
    cases = [
        ((tmp_path / "absent.pth", backbone_file, "alex"), UserError, "weights file not found"),
        ((lin_file, tmp_path / "absent.pth", "alex"), UserError, "backbone file not found"),
        ((lin_file, None, "alex"), UserError, "lacks the alexnet backbone .*features.0.weight"),
        ((backbone_file, None, "alex"), UserError, "lacks the lin layers lin0.model.1.weight.*its keys: features"),
        ((lin_file, tmp_path / "partial.pth", "alex"), UserError, "lacks features.3.weight; expected torchvision's"),
        ((lin_file, backbone_file, "vgg"), UserError, r"lin1.model.1.weight has shape \(1, 192, 1, 1\).*"
                                                      r"expected \(1, 128, 1, 1\) for net 'vgg'"),
        ((tmp_path / "text.pth", backbone_file, "alex"), UserError, "not a readable torch state dict"),
        ((tmp_path / "text.safetensors", None, "alex"), UserError, "not a readable safetensors file"),
        ((tmp_path / "list.pth", None, "alex"), UserError, "holds no state dict"),
        ((lin_file, backbone_file, "squeeze"), UserError, "unknown LPIPS net 'squeeze'; choose one of: vgg, alex"),
    ]
    for (weights, backbone, net), error, match in cases:
        with pytest.raises(error, match=match) as info:
            check_lpips_files(net, weights, backbone)
        assert "\n" not in str(info.value), str(info.value)
    with pytest.raises(UserError, match="not found"):
        load_lpips(tmp_path / "absent.pth", net="alex")


def test_slice_lpips_averages_the_axial_slices(nets, tmp_path):
    model = load_lpips(*released_files(tmp_path, "alex", *nets["alex"]), net="alex")
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 5, 32, 32, generator=gen) * 2 - 1
    x_hat = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    per_slice = torch.stack([model(x_hat[:, :, k], x[:, :, k]) for k in range(5)], 1)  # [B, D]
    torch.testing.assert_close(slice_lpips(model, x, x_hat), per_slice.mean(), rtol=1e-5, atol=1e-7)
    pick = torch.randperm(5, generator=torch.Generator().manual_seed(7))[:2]
    got = slice_lpips(model, x, x_hat, num_slices=2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, per_slice[:, pick].mean(), rtol=1e-5, atol=1e-7)
    assert slice_lpips(model, x, x.clone()) == 0

    rec = reconstruction_losses(x, x_hat, ssim_weight=0.0, lpips=model, lpips_weight=0.3)
    torch.testing.assert_close(rec["lpips"], per_slice.mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rec["loss"], 5.0 * rec["l1"] + 0.3 * rec["lpips"])
    assert reconstruction_losses(x, x_hat, ssim_weight=0.0)["lpips"] == 0  # off by default
    with pytest.raises(ValueError, match="needs an LPIPS module"):
        reconstruction_losses(x, x_hat, lpips_weight=0.3)


def test_untrained_lpips_builds_without_downloading():
    model = LPIPS("alexnet")
    assert model.net == "alex" and [lin.weight.shape[1] for lin in model.lins] == list(CHANNELS["alex"])
    assert not any(k.startswith("classifier") for k in model.state_dict())


def test_tokenizer_trains_with_the_lpips_term(ct_phantoms, nets, tmp_path):
    from mmseq.runner.checkpoint import safe_torch_load
    from mmseq.runner.task import load_task_file
    from mmseq.runner.train import train

    lin_file, backbone_file = released_files(tmp_path, "alex", *nets["alex"])
    both = save_lpips(load_lpips(lin_file, backbone_file, net="alex"), tmp_path / "lpips_alex.safetensors")
    root, _ = ct_phantoms
    cfg = {"task": "ct-tokenizer", "seed": 0,
           "data": {"root": str(root), "spacing": [8.0, 8.0, 8.0], "size": [9, 32, 32], "crop_depth": 5,
                    "batch_size": 2, "eval_batch_size": 2},
           "model": {"filters": 8, "channel_multipliers": [1, 2], "temporal_downsample": [True], "num_res_blocks": 1,
                     "token_bits": 6, "norm_groups": 4, "ssim_weight": 0.0, "lpips_weight": 0.3, "lpips_net": "alex",
                     "lpips_weights": str(both), "lpips_slices": 3},
           "optim": {"lr": 1e-3},
           "trainer": {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1, "checkpoint_every_n_steps": 2,
                       "log_every_n_steps": 1, "enable_progress_bar": False}}
    path = tmp_path / "lpips.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train(path, run_dir=run)
    assert metrics["global_step"] == 2
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    logged = [float(r["train/lpips"]) for r in rows if r.get("train/lpips")]
    assert len(logged) == 2 and all(v > 0 for v in logged)
    # The frozen network is the user's file: never in the run's checkpoints.
    state = safe_torch_load(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert state and not any("lpips" in k or "lins." in k or "features." in k for k in state)

    bad = [({"lpips_weights": None}, "model.lpips_weights': model.lpips_weight > 0 needs LPIPS weights"),
           ({"lpips_net": "resnet"}, "model.lpips_net': unknown LPIPS net 'resnet'"),
           ({"lpips_weights": str(lin_file), "lpips_backbone_weights": str(tmp_path / "lpips.yaml")},
            "model.lpips_backbone_weights': LPIPS backbone file .* not a readable torch state dict"),
           ({"lpips_weights": str(lin_file)}, "model.lpips_weights': .*lacks the alexnet backbone"),
           ({"lpips_weight": -1.0}, "model.lpips_weight' and 'model.lpips_slices': >= 0")]
    for change, match in bad:
        path.write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], **change}}))
        with pytest.raises(ConfigError, match=match) as info:
            load_task_file(path)
        assert "\n" not in str(info.value)
    # Off by default: no file needed, nothing loaded.
    path.write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "lpips_weight": 0.0, "lpips_weights": None}}))
    load_task_file(path)
