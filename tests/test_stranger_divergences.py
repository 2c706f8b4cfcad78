"""Divergences from eager torch / torch.func on ordinary code, one test (or a few) each, the
oracle beside it."""
import pytest
import torch

import functx

D = torch.float64


# ---------------------------------------------------------------- vmap's non-tensor outputs

_NON_TENSOR = {
    "float": (lambda x: (x.sum(), 1.5), (0, None)),
    "int alone": (lambda x: 3, None),
    "str and bool": (lambda x: (x * 2, "a", True), (0, None, None)),
    "dict": (lambda x: {"a": x, "b": 2.0}, {"a": 0, "b": None}),
}


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("name", sorted(_NON_TENSOR))
def test_vmap_returns_non_tensor_outputs_with_out_dims_none(name, chunk_size):
    """As torch.func.vmap (functx raised TypeError: output of f: expected tensors)."""
    f, out_dims = _NON_TENSOR[name]
    x = torch.randn(4, 3, dtype=D)
    # (torch.func's chunk_size path raises here: it concatenates the numbers; the oracle is
    # its unchunked vmap)
    want = torch.func.vmap(f, out_dims=out_dims)(x)
    for vm in (functx.func.vmap, lambda f, **kw: functx.vmap(f, **kw)):
        got = vm(f, out_dims=out_dims, chunk_size=chunk_size)(x)
        assert type(got) is type(want)
        for g, w in zip(functx.tree_util.tree_leaves(got), functx.tree_util.tree_leaves(want)):
            if isinstance(w, torch.Tensor):
                torch.testing.assert_close(g, w)
            else:
                assert g == w and type(g) is type(w)


def test_vmap_non_tensor_output_with_a_batch_dim_raises_naming_it():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError):
        torch.func.vmap(lambda x: (x, 3))(x)
    with pytest.raises(TypeError, match=r"leaf 1 at \(1,\) is a int.*out_axes \(out_dims\) None"):
        functx.vmap(lambda x: (x, 3))(x)
