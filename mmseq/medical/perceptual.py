"""LPIPS (Zhang et al. 2018) from weights files the user gives, and its slice-wise use on CT volumes.

No pretrained network is reachable here, so nothing is downloaded: the backbone is torchvision's ``vgg16`` or
``alexnet`` ``features`` built with ``weights=None`` and every weight comes from the user's files.

    x, y [N, 3, H, W] in [-1, 1] -> (x - shift) / scale -> backbone, features at 5 ReLUs f_l [N, C_l, H_l, W_l]
      -> unit-normalise over channels -> (f_l(x) - f_l(y))^2 -> 1x1 "lin" conv to 1 channel (non-negative weights
      in the released files) -> mean over H_l, W_l -> sum over l -> [N]

The feature taps are LPIPS' (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for vgg; relu1 ... relu5 for alex) and
shift / scale are its ScalingLayer constants. Files (``.safetensors``, or a torch ``.pt`` / ``.pth`` state dict,
read with ``weights_only`` onto the CPU) come in two layouts:

- two files, as released: the LPIPS lin layers (the ``lpips`` package's ``weights/v0.1/<net>.pth``, keys
  ``lin0.model.1.weight`` ... ``lin4.model.1.weight``, each [1, C_l, 1, 1]) and torchvision's ImageNet state dict
  of the backbone (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``: ``features.<i>.weight`` / ``.bias``; its
  ``classifier.*`` keys are ignored).
- one file holding both: ``features.<i>.*`` beside ``lin<l>.model.1.weight`` (what ``save_lpips`` writes). The state
  dict of an ``lpips.LPIPS`` module (backbone under ``net.slice<k>.<i>.*``) and this module's own (``lins.<l>.weight``)
  are read too, and a lin conv saved without its dropout (``lin<l>.model.0.weight``) is accepted.

CT volumes [B, 1, D, H, W] in [-1, 1] are compared slice by slice (axial slices, the grey value repeated to three
channels): ``slice_lpips``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from mmseq.errors import UserError

__all__ = ["LPIPS", "NETS", "LPIPSFileError", "check_lpips_files", "load_lpips", "save_lpips", "slice_lpips"]

# net -> (torchvision constructor, end of each LPIPS slice in ``features``: the tap is the ReLU just before it).
NETS: dict[str, tuple[str, tuple[int, ...]]] = {
    "vgg": ("vgg16", (4, 9, 16, 23, 30)),
    "alex": ("alexnet", (2, 5, 8, 10, 12)),
}
_ALIASES = {"vgg16": "vgg", "alexnet": "alex"}

# LPIPS' ScalingLayer: ImageNet statistics mapped to inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


class LPIPSFileError(UserError):
    """An LPIPS weights file that cannot be used; ``part`` says which file: ``weights`` or ``backbone``."""

    def __init__(self, message: str, part: str = "weights") -> None:
        super().__init__(message)
        self.part = part


def net_name(net: str) -> str:
    """The canonical net name (``vgg`` or ``alex``); ``vgg16`` and ``alexnet`` are accepted too."""
    name = _ALIASES.get(str(net), str(net))
    if name not in NETS:
        raise UserError(f"unknown LPIPS net {net!r}; choose one of: {', '.join(NETS)}")
    return name


def _features(net: str) -> nn.Sequential:
    """torchvision's ``features`` of ``net``, never downloading. Built on the meta device and then given storage,
    so the large classifier head is never initialised; the convs get PyTorch's default init until loaded."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, NETS[net][0])(weights=None)
    features = model.features.to_empty(device="cpu")
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    return features


def _channels_before(features: nn.Sequential, end: int) -> int:
    """Channels of the feature tap at the end of ``features[:end]`` (its last conv's outputs)."""
    return [m.out_channels for m in features[:end] if isinstance(m, nn.Conv2d)][-1]


class LPIPS(nn.Module):
    """Learned perceptual distance between images [N, C, H, W] (C = 1 or 3, values in [-1, 1]) -> [N].

    Frozen and always in eval mode: no parameter takes gradients, the inputs do. Build it with ``load_lpips``
    (weights from files); ``LPIPS(net)`` alone holds untrained weights. The lin weights and the backbone are
    float32; under autocast the backbone runs in the autocast dtype and the normalise / lin / average in float32.
    """

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        self.net = net_name(net)
        self.features = _features(self.net)
        self.ends = NETS[self.net][1]
        self.lins = nn.ModuleList(nn.Conv2d(_channels_before(self.features, e), 1, 1, bias=False)
                                  for e in self.ends)
        self.register_buffer("shift", torch.tensor(_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE)[None, :, None, None], persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode: a frozen metric, whatever the module around it does."""
        return super().train(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features at the LPIPS taps of scaled inputs x [N, 3, H, W]: five [N, C_l, H_l, W_l]."""
        out, start = [], 0
        for end in self.ends:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS compares two images [N, 1 or 3, H, W] of one shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        n = x.shape[0]
        both = torch.cat([x, y]).to(self.shift.dtype)
        both = both.expand(-1, 3, -1, -1) if both.shape[1] == 1 else both
        feats = self.taps((both - self.shift) / self.scale)
        # The unit normalisation divides by small norms: at least float32 even when the backbone ran in bf16.
        dtype = torch.promote_types(self.shift.dtype, torch.float32)
        total = x.new_zeros(n, dtype=dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            for f, lin in zip(feats, self.lins):
                f = f.to(dtype)
                # eps inside the root (LPIPS adds 1e-10 to the norm): the same value, but a finite gradient where
                # a location's features are all zero, which ReLU features often are.
                f = f / torch.sqrt(f.pow(2).sum(1, keepdim=True) + _EPS)
                diff = (f[:n] - f[n:]).pow(2)  # [N, C_l, H_l, W_l]
                # The 1x1 lin conv (one output, no bias) and the spatial mean commute: average first, then weigh.
                total = total + diff.mean((2, 3)) @ lin.weight.flatten().to(dtype)
        return total


# -- files ------------------------------------------------------------------------------------------------------
_LIN = re.compile(r"^lin(\d+)\.model\.[01]\.weight$")
_OWN_LIN = re.compile(r"^lins\.(\d+)\.weight$")
_LPIPS_NET = re.compile(r"^net\.slice\d+\.(\d+\.(?:weight|bias))$")
_FEATURES = re.compile(r"^features\.(\d+\.(?:weight|bias))$")


def _read(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch state dict (``weights_only``, onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise LPIPSFileError(f"LPIPS {what} file not found: {path}", what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise LPIPSFileError(f"LPIPS {what} file {path} is not a readable safetensors file: "
                                 f"{str(e).splitlines()[0]}", what) from None
    try:
        # map_location: the lpips package's released lin files were saved from CUDA tensors.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and legacy-format errors alike
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LPIPSFileError(f"LPIPS {what} file {path} is not a readable torch state dict: {first}", what) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LPIPSFileError(f"LPIPS {what} file {path} holds no state dict (a mapping of names to tensors)", what)
    return state


def _expected(net: str) -> dict[str, tuple[int, ...]]:
    """This module's state dict keys and shapes for ``net``, from a meta-device build (no memory, no init)."""
    import torchvision

    with torch.device("meta"):
        features = getattr(torchvision.models, NETS[net][0])(weights=None).features
    shapes = {f"features.{k}": tuple(v.shape) for k, v in features.state_dict().items()}
    for i, end in enumerate(NETS[net][1]):
        shapes[f"lins.{i}.weight"] = (1, _channels_before(features, end), 1, 1)
    return shapes


def _to_module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the known layouts to this module's keys (``features.<i>.*``, ``lins.<l>.weight``); others are dropped."""
    out = {}
    for key, value in state.items():
        for pattern, fmt in ((_FEATURES, "features.{}"), (_LPIPS_NET, "features.{}"), (_LIN, "lins.{}.weight"),
                             (_OWN_LIN, "lins.{}.weight")):
            m = pattern.match(key)
            if m:
                out[fmt.format(m.group(1))] = value
                break
    return out


def _gather(net: str, weights: str | Path, backbone: str | Path | None) -> dict[str, torch.Tensor]:
    """The state of an LPIPS ``net`` from its files, checked against the expected keys and shapes."""
    net = net_name(net)
    tv_name, ends = NETS[net][0], NETS[net][1]
    raw = _read(weights, "weights")
    state = _to_module_keys(raw)
    if backbone is not None:
        # The backbone file gives the backbone only (a torchvision file has no lin layers; a combined one's are
        # not wanted twice).
        raw_backbone = _read(backbone, "backbone")
        state.update({k: v for k, v in _to_module_keys(raw_backbone).items() if k.startswith("features.")})
    expected = _expected(net)
    lin_missing = [k for k in expected if k.startswith("lins.") and k not in state]
    if lin_missing:
        raise LPIPSFileError(f"LPIPS weights file {weights} lacks the lin layers {_names(lin_missing)}; expected "
                             f"lin0.model.1.weight ... lin{len(ends) - 1}.model.1.weight as in the lpips package's "
                             f"weights/v0.1/{net}.pth ({_keys_seen(raw)})")
    # The lin shapes first: they tell one net's files from another's before any backbone key is looked for.
    _check_shapes(net, {k: v for k, v in expected.items() if k.startswith("lins.")}, state, weights, "weights")
    feat_missing = [k for k in expected if k.startswith("features.") and k not in state]
    if feat_missing:
        if backbone is None:
            raise LPIPSFileError(f"LPIPS weights file {weights} lacks the {tv_name} backbone "
                                 f"({_names(feat_missing)}); give torchvision's {tv_name} state dict as the backbone "
                                 f"file beside this lin file, or one file holding both (features.<i>.* and "
                                 f"lin<l>.model.1.weight)")
        raise LPIPSFileError(f"LPIPS backbone file {backbone} lacks {_names(feat_missing)}; expected torchvision's "
                             f"{tv_name} state dict (features.<i>.weight / .bias) ({_keys_seen(raw_backbone)})",
                             "backbone")
    _check_shapes(net, {k: v for k, v in expected.items() if k.startswith("features.")}, state,
                  weights if backbone is None else backbone, "weights" if backbone is None else "backbone")
    return {k: state[k].float() for k in expected}


def _check_shapes(net: str, expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], path: str | Path,
                  part: str) -> None:
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise LPIPSFileError(f"LPIPS {key_name(key)} has shape {tuple(state[key].shape)} in {path}, expected "
                                 f"{shape} for net {net!r} (a file of another net?)", part)


def key_name(key: str) -> str:
    """The released name of one of this module's keys (``lins.0.weight`` -> ``lin0.model.1.weight``)."""
    m = _OWN_LIN.match(key)
    return f"lin{m.group(1)}.model.1.weight" if m else key


def _names(keys: list[str]) -> str:
    names = [key_name(k) for k in keys]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _keys_seen(state: dict[str, torch.Tensor]) -> str:
    keys = list(state)
    if not keys:
        return "it holds no tensors"
    return "its keys: " + ", ".join(keys[:3]) + (f" ... ({len(keys)} in all)" if len(keys) > 3 else "")


def check_lpips_files(net: str, weights: str | Path, backbone: str | Path | None = None) -> None:
    """Raise a one-line ``LPIPSFileError`` unless the files hold a complete LPIPS ``net`` (keys and shapes)."""
    _gather(net, weights, backbone)


def load_lpips(weights: str | Path, backbone: str | Path | None = None, net: str = "vgg") -> LPIPS:
    """A frozen LPIPS ``net`` from one file holding both parts, or a lin file plus a torchvision backbone file."""
    model = LPIPS(net)
    model.load_state_dict(_gather(net, weights, backbone))
    return model


def save_lpips(model: LPIPS, path: str | Path) -> Path:
    """Write ``model`` as one file in the combined layout (``features.<i>.*`` and ``lin<l>.model.1.weight``);
    ``.safetensors`` by suffix, else a torch state dict."""
    path = Path(path)
    state = {key_name(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    return path


# -- CT volumes -------------------------------------------------------------------------------------------------
def slice_lpips(lpips: LPIPS, x: torch.Tensor, x_hat: torch.Tensor, num_slices: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean LPIPS over the axial slices of volumes x, x_hat [B, 1, D, H, W] in [-1, 1] (a scalar).

    ``num_slices`` > 0 compares that many slices per volume, the same depth indices for the whole batch, drawn
    without replacement with ``generator`` (a cheaper estimate of the same mean); 0 compares every slice.
    """
    if x.shape != x_hat.shape or x.dim() != 5 or x.shape[1] != 1:
        raise ValueError(f"slice_lpips takes two volumes [B, 1, D, H, W] of one shape, got {tuple(x.shape)} and "
                         f"{tuple(x_hat.shape)}")
    d, h, w = x.shape[2:]
    if 0 < num_slices < d:
        pick = torch.randperm(d, generator=generator)[:num_slices].to(x.device)
        x, x_hat = x.index_select(2, pick), x_hat.index_select(2, pick)
    lpips.to(x.device)

    def slices(v: torch.Tensor) -> torch.Tensor:  # [B, 1, D, H, W] -> [B D, 1, H, W]
        return v.transpose(1, 2).reshape(-1, 1, h, w)

    return lpips(slices(x_hat), slices(x)).mean()
