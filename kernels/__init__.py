"""mmseq.kernels: shared sequence-mixing ops, each with ref / torch / triton paths behind one function."""

from ._dispatch import IMPLS, pick_impl, triton_importable, triton_usable

__all__ = ["IMPLS", "pick_impl", "triton_importable", "triton_usable"]
