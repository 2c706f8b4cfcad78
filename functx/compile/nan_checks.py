"""debug_nans in compiled code: the checks a graph traced with debug_nans on
(graph.meta.check_nans) compiles with; a graph traced with it off compiles without them.

The eager backend checks each equation's outputs (`eqn(k, *outputs)`). The Triton backend
checks each group's outputs (a fused kernel computes many equations at once); when one holds
a NaN it re-runs the graph op by op with the eager impls (JAX re-runs de-optimized too) to
find the first equation that made it. Either way the error names the primitive, the phase
and the user's line recorded at trace time (`Eqn.source`).
"""
from __future__ import annotations

from ..core import Literal
from ..core.nan_check import bad_kind, raise_bad

_UNRECORDED = ("computation", "  (source line not recorded)")


class CompiledNaNChecks:
    """Bound into generated code as `_nans`."""

    def __init__(self, graph, backend: str):
        self.graph = graph
        self.where = f" (in code compiled by functx.jit, {backend} backend)"

    def _raise(self, kind, eqn):
        raise_bad(kind, eqn.prim.name, eqn.source or _UNRECORDED, self.where)

    def eqn(self, k, *values):
        """Eqn k of the graph produced `values`."""
        for v in values:
            kind = bad_kind(v)
            if kind is not None:
                self._raise(kind, self.graph.eqns[k])

    def group(self, values, inputs):
        """A group wrote `values`; `inputs` are the graph's inputs and consts, to re-run it."""
        if any(bad_kind(v) is not None for v in values):
            self.localize(inputs)

    def localize(self, inputs):
        """Run the graph op by op and raise at the first equation whose output is bad."""
        g = self.graph
        env = dict(zip(list(g.invars) + list(g.constvars), inputs))

        def read(a):
            return a.value if isinstance(a, Literal) else env[a]

        for eqn in g.eqns:
            out = eqn.prim.impl(*[read(a) for a in eqn.inputs], **eqn.params)
            outs = list(out) if eqn.prim.multiple_results else [out]
            for v, o in zip(eqn.outputs, outs):
                env[v] = o
                kind = bad_kind(o)
                if kind is not None:
                    self._raise(kind, eqn)
        raise AssertionError("functx.debug_nans: a kernel wrote a NaN that re-running the graph "
                             "op by op did not reproduce")

    def emit_eqn_check(self, k, eqn, out_names) -> str | None:
        """The generated line checking eqn k's floating outputs, or None."""
        names = [n for v, n in zip(eqn.outputs, out_names) if v.type.dtype.is_floating_point]
        return f"_nans.eqn({k}, {', '.join(names)})" if names else None
