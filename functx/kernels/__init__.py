"""Hand-written kernels exposed as primitives, each module holding a primitive with all its
rules (so every transform composes with it) and the kernels that run it.

Layer: imports core/ and prims/; frontend/ maps PyTorch calls onto these primitives.
- attention.py: `attention_p` (fused scaled-dot-product attention) and its tangent and
  backward primitives; attention_math.py is the PyTorch reference (CPU impl, oracle),
  attention_triton.py the flash-attention-style Triton kernels (forward, backward, jvp).
- matmul.py: the Triton matmul template (prologue(A) @ B -> epilogue) that the Triton
  scheduler chooses for `dot_general` where it absorbs pointwise neighbours.
- cpu_gemm.py: `mm_into`, the fused tier's 2-D float32 products on the CPU through oneDNN
  where a once-per-process probe finds it faster than torch's BLAS (MKL on AMD CPUs).
"""
