"""Hand-written Triton kernels the compiler and primitives use: the matmul template (matmul.py), fused attention."""
