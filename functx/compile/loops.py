"""Loops in generated code (and checkpoints: a call of their body): a scan equation becomes a real Python `for` loop that calls its
body's compiled function (the same backend compiles the body: generated PyTorch code on
the eager backend, the body's kernels on the Triton one), writing each step's ys into
buffers allocated once. The loop's source is kept for explain."""
from __future__ import annotations

from .symbolic import bind_symbols

LOOP_SOURCES = "__functx_loops__"     # namespace key: the generated loops, for explain


def emit_scan(eqn, srcs, namespace, compile_body) -> str:
    """The call expression of a generated loop function for a scan equation."""
    p = eqn.params
    body = compile_body(p["body"])
    n = len(namespace)                # grows with every binding, so names never collide
    body_name, loop_name = f"_scan_body_{n}", f"_scan_{n}"
    namespace[body_name] = body.call
    nk, nc = p["num_consts"], p["num_carry"]
    nx = len(eqn.inputs) - nk - nc
    ys_types = [v.type for v in eqn.outputs[nc:]]
    ks, cs, xs = ([f"{s}{i}" for i in range(k)] for s, k in (("k", nk), ("c", nc), ("x", nx)))
    ys, ybufs = [f"y{j}" for j in range(len(ys_types))], [f"ys{j}" for j in range(len(ys_types))]
    lines = [f"def {loop_name}({', '.join(ks + cs + xs)}):"]
    # symbolic dims (jit): the loop reads the sizes it prints from its own inputs
    lines += bind_symbols([getattr(a, "type", None) for a in eqn.inputs], ks + cs + xs,
                          [p["length"]] + [tuple(t.shape) for t in ys_types])
    for buf, t in zip(ybufs, ys_types):
        lines.append(f"    {buf} = torch.empty({tuple(t.shape)!r}, dtype={t.dtype}, device={str(t.device)!r})")
    steps = f"range({p['length'] - 1}, -1, -1)" if p["reverse"] else f"range({p['length']})"
    lines.append(f"    for i in {steps}:")
    outs = cs + ys
    call_args = ks + cs + [f"{x}[i]" for x in xs]
    lines.append(f"        {', '.join(outs)}{',' if len(outs) == 1 else ''} = {body_name}({', '.join(call_args)})")
    lines += [f"        {buf}[i] = {y}" for buf, y in zip(ybufs, ys)]
    results = cs + ybufs
    lines.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<functx scan loop {n}>", "exec"), namespace)
    namespace.setdefault(LOOP_SOURCES, []).append(
        f"# {loop_name}: a scan of {p['length']} steps; its body, {body_name}, compiled by the "
        f"{body.backend} backend:\n{source}{_indent(body.report())}")
    return f"{loop_name}({', '.join(srcs)})"


def emit_checkpoint(eqn, srcs, namespace, compile_body) -> str:
    """A checkpoint equation: a call of its body's compiled function (kept a separate
    function, so the recomputation it holds is never merged with the forward pass)."""
    body = compile_body(eqn.params["body"])
    name = f"_checkpoint_body_{len(namespace)}"
    namespace[name] = body.call
    namespace.setdefault(LOOP_SOURCES, []).append(
        f"# {name}: a checkpoint body, compiled by the {body.backend} backend:\n{_indent(body.report())}")
    return f"{name}({', '.join(srcs)})"


def loop_report(namespace) -> str:
    """The generated loops and their bodies' reports ('' when there are none)."""
    sources = namespace.get(LOOP_SOURCES)
    return "\n\n-- loops --\n" + "\n\n".join(sources) if sources else ""


def _indent(text):
    return "\n".join("    # " + line for line in text.splitlines())
