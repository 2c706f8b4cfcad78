"""What the kernel printers of the fusion backends share (TritonOps, CppOps): the lines of a
kernel in three places (once per row before everything, before the reduction loop, in the
current scope) and CSE of expression text per scope."""
from __future__ import annotations

from ...core.primitive import Unsupported


class KernelPrinter:
    def __init__(self, name: str):
        self.name = name
        self.prelude: list[str] = []
        self.body: list[str] = []
        self.out = self.body
        self.cache = [{}]                 # CSE: expression text -> value, one dict per scope
        self.prelude_cache: dict = {}
        self.in_args: dict[str, str] = {}     # buffer -> kernel argument
        self.out_args: dict[str, str] = {}
        self.counter = 0
        self.loop_inits: list[str] = []
        self.loop_finals: list[str] = []
        # jit's symbolic dims: each symbolic size (or size-valued constant) the kernel prints
        # is a scalar argument, expression -> name; the host wrapper computes its value per call
        self.size_args: dict = {}


    def size_arg(self, expr) -> str:
        name = self.size_args.get(expr)
        if name is None:
            name = self.size_args[expr] = f"ks{len(self.size_args)}"
        return name
    def _cached(self, expr):
        """The value already computed for this expression text in a visible scope, or None."""
        return self.prelude_cache.get(expr) or next((c[expr] for c in reversed(self.cache) if expr in c), None)

    def _fresh_name(self) -> str:
        name = f"tmp{self.counter}"
        self.counter += 1
        return name

    def _place(self, expr, line, val, hoist, dims):
        """Print `line` where `val` is first needed and remember it under `expr`."""
        if hoist:                       # x-only, no reduction: once per row, first
            cache = self.prelude_cache
            self.prelude.append(line)
        elif "r" not in dims and len(self.cache) > 1:   # per-row value inside a loop: before it
            cache = self.cache[-2]
            self.loop_inits.append(line)
        else:
            cache = self.cache[-1]
            self.out.append(line)
        cache[expr] = val
        return val

    def _from_template(self, template, args, dtype, params, literal):
        """The value a primitive's pointwise template (`triton` / `cpp`) prints for args;
        `literal(expr, dtype)` makes a constant (no operands)."""
        if isinstance(template, Unsupported):
            raise NotImplementedError(template)
        if template == "{0}":                   # identity (stop_gradient): no new value
            return args[0]
        expr = template.format(*(a.expr for a in args), **params)
        if not args:
            return literal(expr, dtype)
        return self._new(expr, dtype, frozenset().union(*(a.dims for a in args)), all(a.hoist for a in args))
