"""Environment report for ``mmseq info``: versions, devices and which kernel paths can run."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform

import torch


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


KERNEL_OPS = ("selective_scan", "causal_conv1d", "fft_conv", "attention")


def collect_info() -> dict:
    from mmseq.kernels import triton_importable
    from mmseq.kernels._dispatch import triton_interpret

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    ops = {}
    for op in KERNEL_OPS:
        try:
            importlib.import_module(f"mmseq.kernels.{op}")
            present = True
        except ImportError:
            present = False
        paths = ["ref", "torch"] if present else []
        if present and triton_importable() and (cuda or triton_interpret()):
            paths.append("triton" + ("" if cuda else " (interpreter)"))
        ops[op] = paths
    return {
        "mmseq": _version("mmseq"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("torch", "triton", "lightning", "torchaudio", "torchvision",
                                              "timm", "monai", "open_clip_torch", "gradio")},
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": cuda,
        "cuda_devices": devices,
        "triton_importable": triton_importable(),
        "triton_interpret": triton_interpret(),
        "default_kernel_path": "triton" if cuda and triton_importable() else "torch",
        "kernel_paths": ops,
        "kernel_fallbacks": _fallbacks(),
        "cpu_kernels": _cpu_kernels(),
    }


def _cpu_kernels() -> dict[str, str]:
    """Op -> the state of its compiled CPU core (kernels/csrc)."""
    from mmseq.kernels import _cpu_build

    return {op: _cpu_build.status(name) for op, name in _cpu_build.CPU_KERNELS.items()}


def _fallbacks() -> dict[str, str]:
    """Ops whose default Triton path failed in this process and now run on torch (op -> error)."""
    from mmseq.kernels import fallbacks

    return dict(fallbacks())


CORE_KEYS = ("mmseq", "python", "platform", "versions", "cpu_threads", "cpu_count", "cuda", "cuda_devices",
             "triton_importable", "triton_interpret", "default_kernel_path", "kernel_paths", "kernel_fallbacks",
             "cpu_kernels")


def format_info(info: dict) -> str:
    lines = [f"mmseq {info['mmseq']}  python {info['python']}  {info['platform']}"]
    lines += [f"  {k:16s} {v}" for k, v in info["versions"].items()]
    lines.append(f"devices: cpu ({info['cpu_count']} cores, {info['cpu_threads']} torch threads)"
                 + (", cuda: " + ", ".join(info["cuda_devices"]) if info["cuda"] else ", no CUDA device"))
    lines.append(f"triton: {'importable' if info['triton_importable'] else 'not available'}"
                 + (" (TRITON_INTERPRET=1: kernels run in the CPU interpreter)" if info["triton_interpret"] else ""))
    lines.append(f"kernel paths (default: {info['default_kernel_path']}):")
    for op, paths in info["kernel_paths"].items():
        lines.append(f"  {op:16s} {', '.join(paths) if paths else 'not built yet'}")
    for op, error in info.get("kernel_fallbacks", {}).items():
        lines.append(f"  {op:16s} fell back to torch in this process: {error}")
    for op, state in info.get("cpu_kernels", {}).items():
        lines.append(f"  {op:16s} compiled CPU core: {state}")
    for key, value in info.items():  # what the domains add (e.g. audio's speech engines)
        if key in CORE_KEYS:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {'yes' if v is True else 'no' if v is False else v}" for k, v in value.items())
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)
