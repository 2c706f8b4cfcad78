"""ATen -> primitive lowerings, one module per family. Each lowering receives lax values
(tracers, tensors, Python scalars), inserts the broadcasts and converts that primitives
never do, and returns lax values. Ops not here go to torch._decomp, then to the opaque
fallback (dispatch.py).

registry.py holds the tables and `register`; importing a family module fills them
(frontend/__init__.py imports them all). This package's own import stays empty so that
functionalize.py and dispatch.py can read the tables without loading the families, which
import them in turn.

    elementwise   unary math, arithmetic, comparisons, logical/bitwise, where, clamp
    reductions    sum/mean/prod, extrema and arg-extrema, any/all, cumulative ops
    views         view ops, as_strided, cat/flip/pad
    creation      _to_copy, fills, *_like and new_* factories, random factories
    linalg        mm/bmm/addmm/dot/mv, convolution, average pooling
    indexing      index/index_put, gather/scatter, scatter_reduce, sort/topk, masked_select
    nn            ops whose derivatives follow torch's formulas at ties and edges
                  (relu, hardtanh, softmax, norms, cdist, hypot, std, sinc), batch norm
    norms         layer_norm, group_norm (torch's kernels on eager levels: prims/fused_norm.py)
    pooling       max pooling with indices (torch's kernel on eager levels: prims/pool.py),
                  global adaptive max pooling
    resample      F.interpolate's upsample kernels (torch's kernels on eager levels: prims/resample.py)
    activations   softplus, elu/selu/celu, log_ndtr: overflow-safe branches (torch's where()
                  decompositions have NaN derivatives for large inputs)
    rnn           oneDNN's LSTM layer (nn.LSTM on the CPU), as steps of the LSTM cell
    special       torch.special's Bessel functions, with the derivatives torch lacks
    torch_prims   the torch.ops.prims ops that torch._refs decompositions emit
"""
