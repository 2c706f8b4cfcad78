"""functx's type promotion equals torch's (elementwise_dtypes is the oracle)."""
import itertools
import sys

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as KIND, elementwise_dtypes

from functx.frontend.promote import _promoted

DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64, torch.complex64]
OPERANDS = [(d, is_0d) for d in DTYPES for is_0d in (True, False)] + [bool, int, float, complex]
EXAMPLE_SCALAR = {bool: True, int: 1, float: 1.0, complex: 1j}


def _example(op):
    if isinstance(op, tuple):
        return torch.empty(() if op[1] else (1,), dtype=op[0], device="meta")
    return EXAMPLE_SCALAR[op]


def test_promotion_matches_torch_for_all_pairs_and_some_triples():
    combos = list(itertools.product(OPERANDS, repeat=2))
    combos += list(itertools.product(OPERANDS, repeat=3))[::17]
    checked = 0
    for combo in combos:
        if not any(isinstance(c, tuple) for c in combo):
            continue
        for kind in (KIND.DEFAULT, KIND.INT_TO_FLOAT, KIND.ALWAYS_BOOL):
            expected = elementwise_dtypes(*[_example(c) for c in combo], type_promotion_kind=kind)[1]
            assert _promoted(tuple(combo), kind) == expected, (combo, kind)
            checked += 1
    assert checked > 2000


def test_tracing_with_scalars_does_not_import_sympy():
    import subprocess
    code = ("import sys, torch, functx\n"
            "functx.jit(lambda x, i: (x * 2.0 + i * 3).sum())(torch.randn(3), torch.arange(3))\n"
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
