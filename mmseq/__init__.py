"""mmseq: multimodal long-sequence modeling on shared selective-scan, long-convolution and attention kernels."""

__version__ = "0.1.0"
