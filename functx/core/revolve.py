"""Binomial checkpointing (Griewank's Revolve): reversing an n-step loop while holding at most
`slots` carries, with the fewest forward recomputations any such schedule needs.

  beta(s, r) = C(s + r, s): the most steps s carries (the initial one included) can reverse
      when each step is advanced at most r times.
  forward_cost(n, s): the forward steps the optimal schedule runs, r n - beta(s + 1, r - 1)
      for the least r with beta(s, r) >= n (Griewank 1992); n(n - 1)/2 for s = 1.
  run_schedule(n, slots, advance, back, c0): runs the schedule: advance(c, p) -> the carry after
      step p; back(p, c) reverses step p from the carry c before it, for p = n-1, ..., 0.

  run_scan_revolve(body_fn, tbody_fn, args, ...): the backward loop of a scan with
      remat='binomial' (transforms/control_flow/scan_revolve.py) over two callables, so that
      the primitive's impl (graphs evaluated) and the code jit generates (compiled bodies,
      compile/loops.py) run the same driver."""
from __future__ import annotations

from functools import lru_cache
from math import comb

import torch

__all__ = ["beta", "forward_cost", "split", "run_schedule", "run_scan_revolve"]


def beta(s: int, r: int) -> int:
    return comb(s + r, s) if r >= 0 else 0


def _sweeps(n: int, s: int) -> int:
    """The least r with beta(s, r) >= n."""
    r = 0
    while beta(s, r) < n:
        r += 1
    return r


def forward_cost(n: int, s: int) -> int:
    if n <= 1:
        return 0
    if s < 1:
        raise ValueError("binomial checkpointing needs at least one slot (the initial carry)")
    r = _sweeps(n, s)
    return r * n - beta(s + 1, r - 1)


@lru_cache(maxsize=4096)
def split(n: int, s: int) -> int:
    """Where the optimal schedule for n steps and s >= 2 slots stores its next carry: m in
    [1, n-1] minimising m + cost(n - m, s - 1) + cost(m, s). The optimum lies where the right
    part needs r sweeps and the left r - 1, so a few candidates around those bounds suffice."""
    r = _sweeps(n, s)
    cands = {beta(s, r - 1), beta(s, r - 2), n - beta(s - 1, r), n - beta(s - 1, r - 1), n - beta(s - 1, r - 1) - 1}
    best = None
    for m in cands:
        m = min(max(m, 1), n - 1)
        cost = m + forward_cost(n - m, s - 1) + forward_cost(m, s)
        if best is None or cost < best[0]:
            best = (cost, m)
    return best[1]


def run_schedule(n, slots, advance, back, c0):
    """Run the schedule. At most `slots` carries are alive at once (c0 among them); every
    step is reversed once, in the order n-1, ..., 0."""
    if slots < 1:
        raise ValueError("binomial checkpointing needs at least one slot (the initial carry)")

    def rev(lo, hi, c_lo, s):
        while hi > lo:                       # the left part is a tail call: a loop
            if hi - lo == 1:
                back(lo, c_lo)
                return
            if s == 1:                       # only c_lo: advance to the last step each time
                c = c_lo
                for p in range(lo, hi - 1):
                    c = advance(c, p)
                back(hi - 1, c)
                hi -= 1
                continue
            m = split(hi - lo, s)
            c = c_lo
            for p in range(lo, lo + m):
                c = advance(c, p)
            rev(lo + m, hi, c, s - 1)        # c is the stored carry: one slot fewer
            hi = lo + m
    rev(0, n, c0, slots)


def split_groups(args, sizes):
    """args cut into consecutive lists of the given sizes."""
    out, i = [], 0
    for n in sizes:
        out.append(list(args[i:i + n]))
        i += n
    return out


def run_scan_revolve(body_fn, tbody_fn, args, *, num_tconsts, num_consts, num_carry, masks, length, reverse, slots,
                     out_types):
    """The backward loop: body_fn(*consts, *carry, *x) -> carry + ys advances one step,
    tbody_fn(*tconsts, *consts, *carry, *x, *ct_carry, *ct_y) -> cotangents takes one back."""
    const_nz, carry_nz, x_nz, y_nz = masks
    nx = len(x_nz)
    tconsts, consts, carry, xs, ct_carry, ct_ys = split_groups(
        args, [num_tconsts, num_consts, num_carry, nx, sum(carry_nz), sum(y_nz)])
    n_ct = sum(const_nz)
    acc = [torch.zeros(tuple(t.shape), dtype=t.dtype, device=t.device) for t in out_types[:n_ct]]
    ct_x = [torch.zeros(tuple(t.shape), dtype=t.dtype, device=t.device) for t in out_types[n_ct + sum(carry_nz):]]
    at = (lambda p: length - 1 - p) if reverse else (lambda p: p)
    state = {"ct": list(ct_carry), "acc": acc}

    def advance(c, p):
        i = at(p)
        return list(body_fn(*consts, *c, *[x[i] for x in xs]))[:num_carry]

    def back(p, c):
        i = at(p)
        outs = list(tbody_fn(*tconsts, *consts, *c, *[x[i] for x in xs], *state["ct"], *[y[i] for y in ct_ys]))
        state["acc"] = [a + g for a, g in zip(state["acc"], outs[:n_ct])]
        state["ct"] = outs[n_ct:n_ct + len(state["ct"])]
        for buf, g in zip(ct_x, outs[n_ct + len(state["ct"]):]):
            buf[i] = g
    run_schedule(length, slots, advance, back, list(carry))
    return state["acc"] + list(state["ct"]) + ct_x
