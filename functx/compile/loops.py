"""Loops in generated code (and checkpoints: a call of their body): a scan equation becomes a real Python `for` loop that calls its
body's compiled function (the same backend compiles the body: generated PyTorch code on
the eager backend, the body's kernels on the Triton one), writing each step's ys into
buffers allocated once. The loop's source is kept for explain."""
from __future__ import annotations

from ..core.revolve import run_scan_revolve
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
    trips = p.get("trip_count")
    # symbolic dims (jit): the loop reads the sizes it prints from its own inputs
    lines += bind_symbols([getattr(a, "type", None) for a in eqn.inputs], ks + cs + xs,
                          [p["length"]] + [tuple(t.shape) for t in ys_types])
    for buf, t in zip(ybufs, ys_types):
        new = "torch.empty" if trips is None else "torch.zeros"      # skipped steps' ys are zeros
        lines.append(f"    {buf} = {new}({tuple(t.shape)!r}, dtype={t.dtype}, device={str(t.device)!r})")
    if trips is None:
        steps = f"range({p['length'] - 1}, -1, -1)" if p["reverse"] else f"range({p['length']})"
    else:                             # steps from the count on are identities: stop there
        lines.append(f"    n = max(0, min({p['length']}, int({ks[trips]})))")
        steps = "range(n - 1, -1, -1)" if p["reverse"] else "range(n)"
    lines.append(f"    for i in {steps}:")
    outs = cs + ys
    call_args = ks + cs + [f"{x}[i]" for x in xs]
    lines.append(f"        {', '.join(outs)}{',' if len(outs) == 1 else ''} = {body_name}({', '.join(call_args)})")
    lines += [f"        {buf}[i] = {y}" for buf, y in zip(ybufs, ys)]
    results = cs + ybufs
    lines.append(f"    return ({', '.join(results)}{',' if len(results) == 1 else ''})")
    _define_loop(namespace, lines, f"scan loop {n}",
                 f"# {loop_name}: a scan of {p['length']} steps; its body, {body_name}, compiled by the "
                 f"{body.backend} backend:", _indent(body.report()))
    return f"{loop_name}({', '.join(srcs)})"


def _define_loop(namespace, lines, filename, header, bodies_report):
    """Exec a generated loop function into the namespace and keep its source for explain."""
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<functx {filename}>", "exec"), namespace)
    namespace.setdefault(LOOP_SOURCES, []).append(f"{header}\n{source}{bodies_report}")


def emit_while(eqn, srcs, namespace, compile_body) -> str:
    """A while_loop equation: a Python `while` calling its cond and body compiled by the
    backend. A carry the body writes in place (reverse mode's tape, `while_tape_write`) is
    copied once before the loop, so the loop owns the buffer it writes."""
    p = eqn.params
    cond, body = compile_body(p["cond_graph"]), compile_body(p["body_graph"])
    n_cc, n_bc = p["n_cc"], p["n_bc"]
    nc = len(eqn.inputs) - n_cc - n_bc
    n = len(namespace)
    cond_name, body_name, loop_name = f"_while_cond_{n}", f"_while_body_{n}", f"_while_{n}"
    namespace[cond_name], namespace[body_name] = cond.call, body.call
    carry_vars = p["body_graph"].invars[n_bc:]
    written = {e.inputs[0] for e in p["body_graph"].eqns if e.prim.name == "while_tape_write"}
    ccs, bcs, cs = ([f"{s}{i}" for i in range(k)] for s, k in (("k", n_cc), ("b", n_bc), ("c", nc)))
    lines = [f"def {loop_name}({', '.join(ccs + bcs + cs)}):"]
    lines += [f"    {c} = {c}.clone(memory_format=torch.contiguous_format)"
              for c, v in zip(cs, carry_vars) if v in written]
    comma = "," if nc == 1 else ""
    lines.append(f"    while bool({cond_name}({', '.join(ccs + cs)})[0]):")
    lines.append(f"        {', '.join(cs)}{comma} = {body_name}({', '.join(bcs + cs)})")
    lines.append(f"    return ({', '.join(cs)}{comma})")
    _define_loop(namespace, lines, f"while loop {n}",
                 f"# {loop_name}: a while loop; its cond, {cond_name}, and body, {body_name}, compiled by the "
                 f"{body.backend} backend:", f"{_indent(cond.report())}\n{_indent(body.report())}")
    return f"{loop_name}({', '.join(srcs)})"


def emit_scan_revolve(eqn, srcs, namespace, compile_body) -> str:
    """A scan_revolve equation (the backward loop of scan(remat='binomial')): the Revolve
    driver (core/revolve.py, via the primitive's run_revolve) calling the forward body and
    the one-step-back body, each compiled by this backend."""
    p = dict(eqn.params)
    body, tbody = compile_body(p.pop("body")), compile_body(p.pop("tbody"))
    n = len(namespace)
    name = f"_scan_revolve_{n}"
    run, out_types = run_scan_revolve, [v.type for v in eqn.outputs]
    namespace[name] = lambda *args: run(body.call, tbody.call, args, out_types=out_types, **p)
    namespace.setdefault(LOOP_SOURCES, []).append(
        f"# {name}: the backward loop of a {p['length']}-step scan, binomial checkpointing with "
        f"{p['slots']} carries; its forward body:\n{_indent(body.report())}\n    # its step back:\n"
        f"{_indent(tbody.report())}")
    return f"{name}({', '.join(srcs)})"


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
