"""Sweep PyTorch's OpInfo database through functx and write docs/coverage.md.

For every op in torch.testing._internal.common_methods_invocations.op_db (float64 where
supported, else float32; CPU; a few sample inputs each) and each transform:

  forward  functx.jit(f)            vs f (eager torch)
  vjp      functx.vjp               vs torch.func.vjp (random cotangent)
  jvp      functx.jvp               vs torch.func.jvp (or, where an op lacks forward AD,
                                       the vjp of torch's pullback: J t)
  vmap     functx.vmap over a batch of 2 (each float input and its flip) vs a Python loop

each op is recorded as: native (agrees, no opaque fallback), fallback (agrees through the
opaque fallback), disagree, error (functx raised where torch did not), or skip (torch itself
can't: no float output, no autograd, a random op, the oracle raised). A per-op timeout
(SIGALRM) keeps the sweep bounded.

    python tools/opinfo_sweep.py                      # all ops -> docs/coverage.md
    python tools/opinfo_sweep.py --ops add,matmul -v  # a few ops, print each result
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
import warnings
from collections import Counter

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import functx  # noqa: E402
from functx.frontend import record_fallbacks  # noqa: E402

TRANSFORMS = ("forward", "vjp", "jvp", "vmap")

# Disagreements investigated by hand, where the oracle (torch) is the one that is off.
ORACLE_NOTES = {
    ("nn.functional.nll_loss", "jvp"):
        "the sample differentiates w.r.t. the class `weight` too; functx's jvp matches central "
        "finite differences there and torch.func.jvp does not (torch treats `weight` as "
        "non-differentiable). With respect to the input alone both agree.",
}
# torch's derivative formulas for these ignore the cotangents of the saved statistics they
# also return (mean/rstd): only the normalized output is differentiated, as F.* uses them.
UNINITIALIZED = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted"}
FIRST_OUTPUT_ONLY = {"native_layer_norm", "native_batch_norm", "_native_batch_norm_legit",
                     "_batch_norm_with_update"}
ORDER = {"native": 0, "fallback": 1, "skip": 2, "disagree": 3, "error": 4}


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


class Skip(Exception):
    pass


def _tol(dtype):
    return dict(atol=1e-6, rtol=1e-5) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-3)


def _close(got, want, dtype):
    g, _ = tree_flatten(got)
    w, _ = tree_flatten(want)
    g = [x for x in g if isinstance(x, torch.Tensor)]
    w = [x for x in w if isinstance(x, torch.Tensor)]
    if len(g) != len(w):
        return f"{len(g)} outputs vs {len(w)}"
    for a, b in zip(g, w):
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} vs {b.dtype}"
        try:
            torch.testing.assert_close(a, b, equal_nan=True, check_device=False, **_tol(dtype))
        except AssertionError as e:
            return str(e).strip().splitlines()[0] + " " + " ".join(str(e).splitlines()[1:3])
    return None


class Case:
    """One sample as a function of its floating-point tensor leaves."""

    def __init__(self, op, sample):
        self.op = op
        # OpInfo's gradient tests differentiate this view of the outputs (e.g. native_layer_norm's
        # output only: torch's formulas ignore the saved mean/rstd outputs)
        self.grad_view = sample.output_process_fn_grad
        if op.name in FIRST_OUTPUT_ONLY:
            self.grad_view = lambda out: out[0]
        leaves, self.spec = tree_flatten((sample.input, sample.args, sample.kwargs))
        self.leaves = leaves
        self.pos = [i for i, l in enumerate(leaves) if isinstance(l, torch.Tensor)
                    and l.dtype.is_floating_point]
        self.args = tuple(leaves[i] for i in self.pos)

    def __call__(self, *xs):
        leaves = list(self.leaves)
        for i, x in zip(self.pos, xs):
            leaves[i] = x
        inp, args, kwargs = tree_unflatten(leaves, self.spec)
        return self.op(inp, *args, **kwargs)


def _float_outs(out):
    return [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and o.dtype.is_floating_point]


def _first_line(e):
    s = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return s[:200]


def _oracle_jvp(f, primals, tangents):
    try:
        return torch.func.jvp(f, primals, tangents)[1]
    except Exception:  # noqa: BLE001  (no forward AD formula): J t = vjp of the pullback
        out, pb = torch.func.vjp(f, *primals)
        ct0 = tree_map(lambda o: torch.zeros_like(o) if isinstance(o, torch.Tensor) else o, out)
        _, pbpb = torch.func.vjp(pb, ct0)
        (jt,) = pbpb(tuple(tangents))
        return jt


def check_sample(case, transform, dtype, gen):
    """-> (status, message) for one sample; raises Skip when torch itself can't."""
    f, xs = case, case.args
    try:
        want = f(*xs)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"torch: {_first_line(e)}")
    if transform == "forward":
        with record_fallbacks() as fb:
            try:
                got = functx.jit(f)(*xs)
            except functx.ConcretizationError:
                # data-dependent output shape (nonzero, masked_select, ...): jit must refuse
                # with a clear error; the eager trace must still agree
                got = functx.jvp(f, xs, tuple(torch.zeros_like(x) for x in xs))[0]
        return fb, _close(got, want, dtype)
    if not xs or not _float_outs(want):
        raise Skip("no floating-point inputs/outputs")
    if case.grad_view is not None and transform in ("vjp", "jvp"):
        f = lambda *a: case.grad_view(case(*a))  # noqa: E731
        if not _float_outs(f(*xs)):
            raise Skip("no floating-point outputs to differentiate")
    if transform == "vjp":
        if not case.op.supports_autograd:
            raise Skip("op has no autograd")
        try:
            out_t, pb_t = torch.func.vjp(f, *xs)
            ct = tree_map(lambda o: (torch.randn(o.shape, dtype=o.dtype, generator=gen)
                                     if o.dtype.is_floating_point else torch.zeros_like(o))
                          if isinstance(o, torch.Tensor) else None, out_t)
            want_g = pb_t(ct)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch.func.vjp: {_first_line(e)}")
        with record_fallbacks() as fb:
            _, pb = functx.vjp(f, *xs)
            got = pb(ct)
        return fb, _close(got, want_g, dtype)
    if transform == "jvp":
        if not case.op.supports_autograd:
            raise Skip("op has no autograd")
        tans = tuple(torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in xs)
        try:
            want_t = _oracle_jvp(f, xs, tans)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch.func.jvp: {_first_line(e)}")
        with record_fallbacks() as fb:
            _, got = functx.jvp(f, xs, tans)
        return fb, _close(got, want_t, dtype)
    if transform == "vmap":
        batched = [torch.stack([x, x.flip(tuple(range(x.ndim)))]) for x in xs]
        try:
            outs = [f(*[b[k].clone() for b in batched]) for k in range(2)]
            want_v = tree_map(lambda *o: torch.stack(o) if isinstance(o[0], torch.Tensor) else o[0], *outs)
        except Exception as e:  # noqa: BLE001
            raise Skip(f"torch loop: {_first_line(e)}")
        with record_fallbacks() as fb:
            got = functx.vmap(f)(*batched)
        return fb, _close(got, want_v, dtype)
    raise ValueError(transform)


class _SeenRandom(torch.utils._python_dispatch.TorchDispatchMode):
    """Notes whether any ATen op tagged nondeterministic_seeded runs."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.nondeterministic_seeded in func.tags:
            self.seen = True
        return func(*args, **(kwargs or {}))


def _is_random(case):
    """Random ops can't match torch's RNG stream (OpInfo often reseeds inside the op)."""
    mode = _SeenRandom()
    try:
        with mode:
            case(*case.args)
    except Exception:  # noqa: BLE001
        return False
    return mode.seen


def _has_complex_or_no_tensor(case):
    try:
        out = case(*case.args)
    except Exception:  # noqa: BLE001
        return None
    leaves = [x for x in tree_flatten(out)[0] + case.leaves if isinstance(x, torch.Tensor)]
    outs = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
    if any(x.is_complex() for x in leaves):
        return "complex tensors (functx raises a clear error for them)"
    if not outs:
        return "returns no tensors"
    if any(x.is_sparse or x.layout != torch.strided for x in leaves):
        return "sparse/non-strided tensors"
    return None


def sweep_op(op, n_samples, timeout, transforms=TRANSFORMS):
    dtypes = op.supported_dtypes("cpu")
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32 if torch.float32 in dtypes else None
    result = {t: ("skip", "no float32/float64 support") for t in transforms}
    if dtype is None:
        return result, None
    if op.name in UNINITIALIZED:
        return {t: ("skip", "uninitialized memory") for t in transforms}, dtype
    gen = torch.Generator().manual_seed(0)
    signal.alarm(timeout)
    try:
        torch.manual_seed(0)
        samples = []
        for s in op.sample_inputs("cpu", dtype, requires_grad=False):
            samples.append(s)
            if len(samples) >= n_samples:
                break
        cases = [Case(op, s) for s in samples]
        if any(_is_random(c) for c in cases):
            return {t: ("skip", "random op") for t in transforms}, dtype
        why = _has_complex_or_no_tensor(cases[0]) if cases else None
        if why:
            return {t: ("skip", why) for t in transforms}, dtype
        for t in transforms:
            status, msg, any_fb, n_ok = "skip", "no usable sample", False, 0
            for case in cases:
                try:
                    fb, err = check_sample(case, t, dtype, gen)
                except Skip as e:
                    msg = str(e) if n_ok == 0 and status == "skip" else msg
                    continue
                except Timeout:
                    raise
                except Exception as e:  # noqa: BLE001
                    status, msg = "error", _first_line(e)
                    break
                if err is not None:
                    status, msg = "disagree", err
                    break
                n_ok += 1
                any_fb = any_fb or bool(fb)
                if any_fb:
                    msg = ", ".join(fb)
            if status == "skip" and n_ok:
                status = "fallback" if any_fb else "native"
                msg = msg if any_fb else ""
            result[t] = (status, msg)
    except Timeout:
        for t in transforms:
            if result[t][0] == "skip" and result[t][1] == "no float32/float64 support":
                result[t] = ("error", f"timeout after {timeout}s")
    finally:
        signal.alarm(0)
    return result, dtype


def op_label(op):
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def write_report(results, path, elapsed, n_samples):
    lines = ["# OpInfo coverage", "",
             "Generated by `python tools/opinfo_sweep.py` "
             f"({len(results)} OpInfo entries, up to {n_samples} samples each, CPU, float64 where "
             f"supported; {elapsed / 60:.1f} min). Each transform is compared against PyTorch: "
             "forward = `functx.jit(f)` vs eager torch; vjp vs `torch.func.vjp`; jvp vs "
             "`torch.func.jvp` (or J t from torch's reverse mode where an op lacks forward AD); "
             "vmap vs a Python loop.", "",
             "*agree* = native + fallback (agrees through the opaque torch.func fallback); percentages "
             "are of the ops the oracle could check (skips excluded: random ops, no float outputs, no "
             "autograd, torch itself raising).", "",
             "| transform | checked | agree | agree % | native | native % | fallback | disagree | error | skipped |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in TRANSFORMS:
        c = Counter(r[t][0] for r in results.values())
        checked = c["native"] + c["fallback"] + c["disagree"] + c["error"]
        agree = c["native"] + c["fallback"]
        pct = lambda n: f"{100 * n / checked:.1f}%" if checked else "-"  # noqa: E731
        lines.append(f"| {t} | {checked} | {agree} | {pct(agree)} | {c['native']} | {pct(c['native'])} | "
                     f"{c['fallback']} | {c['disagree']} | {c['error']} | {c['skip']} |")
    lines += ["", "## Ops that disagree or error", ""]
    lines += [f"- **{name}** ({t}): {why}" for (name, t), why in ORACLE_NOTES.items()
              if results.get(name, {}).get(t, ("",))[0] == "disagree"]
    lines += ["", "| op | transform | status | first line |", "|---|---|---|---|"]
    for name in sorted(results):
        for t in TRANSFORMS:
            st, msg = results[name][t]
            if st in ("disagree", "error"):
                lines.append(f"| {name} | {t} | {st} | {msg.replace('|', '/')[:160]} |")
    lines += ["", "## Ops that go through the opaque fallback", "",
              "| op | transforms | fallback ATen ops |", "|---|---|---|"]
    for name in sorted(results):
        fbs = [(t, results[name][t][1]) for t in TRANSFORMS if results[name][t][0] == "fallback"]
        if fbs:
            ops = sorted({o for _, m in fbs for o in m.split(", ")})
            lines.append(f"| {name} | {', '.join(t for t, _ in fbs)} | {', '.join(ops)[:160]} |")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all of op_db)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=30, help="seconds per op")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "coverage.md"))
    ap.add_argument("--json", default="", help="also write raw results here")
    ap.add_argument("--elapsed", type=float, default=0.0, help="(with --from-json) sweep time, seconds")
    ap.add_argument("--from-json", default="", help="re-render the report from saved results")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        for name in saved:
            if name.split(".")[0] in UNINITIALIZED:
                saved[name] = {t: ["skip", "uninitialized memory"] for t in TRANSFORMS}
        write_report({k: {t: tuple(v[t]) for t in TRANSFORMS} for k, v in saved.items()}, args.out,
                     args.elapsed, args.samples)
        return saved
    warnings.filterwarnings("ignore")
    from torch.testing._internal.common_methods_invocations import op_db
    wanted = set(filter(None, args.ops.split(",")))
    ops = [op for op in op_db if not wanted or op.name in wanted or op_label(op) in wanted]
    signal.signal(signal.SIGALRM, _alarm)
    results = {}
    t0 = time.time()
    for k, op in enumerate(ops):
        t1 = time.time()
        try:
            res, dtype = sweep_op(op, args.samples, args.timeout)
        except Exception as e:  # noqa: BLE001  (sample generation itself failed)
            res = {t: ("skip", f"samples: {_first_line(e)}") for t in TRANSFORMS}
        results[op_label(op)] = res
        if args.verbose:
            summary = " ".join(f"{t}={res[t][0]}" for t in TRANSFORMS)
            bad = "; ".join(f"{t}: {res[t][1]}" for t in TRANSFORMS if res[t][0] in ("disagree", "error", "fallback"))
            print(f"[{k + 1}/{len(ops)}] {op_label(op):40s} {summary} ({time.time() - t1:.1f}s) {bad[:300]}",
                  flush=True)
    elapsed = time.time() - t0
    if not wanted or args.out != ap.get_default("out"):
        write_report(results, args.out, elapsed, args.samples)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    for t in TRANSFORMS:
        c = Counter(r[t][0] for r in results.values())
        checked = c["native"] + c["fallback"] + c["disagree"] + c["error"]
        print(f"{t:8s} checked {checked:4d}  agree {100 * (c['native'] + c['fallback']) / max(checked, 1):5.1f}%  "
              f"native {100 * c['native'] / max(checked, 1):5.1f}%  disagree {c['disagree']}  error {c['error']}  "
              f"skip {c['skip']}")
    return results


if __name__ == "__main__":
    main()
