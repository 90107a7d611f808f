"""mmseq.kernels: shared sequence-mixing ops, each with ref / torch / triton paths behind one function.

The package re-exports each op's public function under the op's name, so ``mmseq.kernels.attention`` is the
function; reach a module itself with ``importlib.import_module("mmseq.kernels.attention")``.
"""

from ._dispatch import IMPLS, TritonFallbackWarning, fallbacks, pick_impl, triton_importable, triton_usable
from .attention import KVCache, attention, attention_ref
from .cauchy import cauchy, cauchy_ref
from .causal_conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref
from .fft_conv import fft_conv, fft_conv_ref
from .selective_scan import selective_scan, selective_scan_ref, selective_state_update, selective_state_update_ref
from .ssd import ssd, ssd_ref, ssd_state_update, ssd_state_update_ref

__all__ = [
    "IMPLS", "KVCache", "TritonFallbackWarning", "attention", "attention_ref", "cauchy", "cauchy_ref",
    "causal_conv1d", "causal_conv1d_ref",
    "causal_conv1d_update", "causal_conv1d_update_ref", "fallbacks", "fft_conv", "fft_conv_ref", "pick_impl",
    "selective_scan", "selective_scan_ref", "selective_state_update", "selective_state_update_ref", "ssd", "ssd_ref",
    "ssd_state_update", "ssd_state_update_ref", "triton_importable", "triton_usable",
]
