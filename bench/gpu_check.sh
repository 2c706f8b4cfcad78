#!/usr/bin/env bash
# GPU check for functx's Triton backend: environment, GPU-marked tests, benchmarks.
#
#   bash bench/gpu_check.sh            # ~4-6 min on an H100/H200
#   QUICK=1 bash bench/gpu_check.sh    # smaller benchmark sizes (~2 min)
#
# Needs a CUDA device, torch with CUDA and triton; JAX is used when importable. Nothing
# is downloaded. Prints everything needed to fill docs/benchmarks.md.
set -u
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET                       # compiled kernels, not the interpreter
export FUNCTX_CACHE_DIR="${FUNCTX_CACHE_DIR:-$(mktemp -d /tmp/functx-cache.XXXXXX)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX shares the GPU with torch in one process
export PYTHONUNBUFFERED=1
status=0
t0=$(date +%s)

echo "== environment =="
python - <<'PY' || status=1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"| {p.total_memory / 2**30:.0f} GiB | SMs {p.multi_processor_count}")
for mod in ("optree", "hypothesis", "jax"):
    try:
        m = __import__(mod); print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "not importable:", type(e).__name__)
PY
nvidia-smi --query-gpu=name,clocks.max.memory,memory.total,driver_version --format=csv 2>/dev/null || true

echo; echo "== GPU-marked tests =="
timeout 200 python -m pytest -q -m gpu tests/ -p no:cacheprovider --continue-on-collection-errors -rs \
    || status=1

echo; echo "== golden kernel counts on CUDA (explain) =="
timeout 120 python - <<'PY' || status=1
import torch, torch.nn.functional as F, functx
x = torch.randn(64, 256, device="cuda"); y = torch.randn(256, device="cuda")
cases = {
    "elementwise chain": (lambda x: torch.sigmoid(torch.sin(x) * x.exp() + 1), (x,)),
    "row softmax": (lambda x: torch.softmax(x, -1), (x,)),
    "row layer_norm": (lambda x: F.layer_norm(x, (256,)), (x,)),
    "(x[:,None]*tanh(y)[None,:]).sum(0)": (lambda a, b: (a[:, None] * torch.tanh(b)[None, :]).sum(0), (x[0], y)),
    "vmap(grad(elementwise sum))": (functx.vmap(functx.grad(lambda v: (torch.sin(v) * v).sum())), (x,)),
}
for name, (f, args) in cases.items():
    ex = functx.explain(f, backend="triton")(*args)
    out = functx.jit(f, backend="triton")(*args)
    ref = f(*args)
    err = (out - ref).abs().max().item()
    print(f"{name:40s} kernels={len(ex.kernels)}  max err={err:.2e}")
print(functx.explain(lambda x: torch.softmax(x, -1), backend="triton")(x).kernels[0])
PY

echo; echo "== matmul template and CUDA graphs (explain) =="
timeout 60 python - <<'PY' || status=1
import torch, torch.nn.functional as F, functx
x, w, b = (torch.randn(512, 256, device="cuda", dtype=torch.float16), torch.randn(256, 128, device="cuda", dtype=torch.float16),
           torch.randn(128, device="cuda", dtype=torch.float16))
f = lambda x, w, b: F.gelu(x @ w + b)
ex = functx.explain(f, backend="triton")(x, w, b)
print([(g.kind, g.name, g.reason) for g in ex.groups])
j = functx.jit(f, backend="triton")
for _ in range(4):
    out = j(x, w, b)
print("max err", (out.float() - f(x, w, b).float()).abs().max().item())
print(str(functx.explain(j)(x, w, b)).split("-- CUDA graphs --")[1].strip())
PY

# The benchmarks share what is left of a ~320 s budget (attention gets its own 150 s below): bench_triton gets half,
# bench_matmul (torch.compile max-autotune is the slow part; skipped once its budget is spent) the rest.
echo; echo "== benchmarks =="
remaining=$(( 320 - ($(date +%s) - t0) ))
if [ "$remaining" -lt 120 ]; then remaining=120; fi
timeout $(( remaining / 2 )) python bench/bench_triton.py ${QUICK:+--quick} || status=1

echo; echo "== matmul template / CUDA graphs benchmarks =="
remaining=$(( 320 - ($(date +%s) - t0) ))
if [ "$remaining" -lt 60 ]; then remaining=60; fi
timeout "$remaining" python bench/bench_matmul.py ${QUICK:+--quick} --budget $(( remaining - 90 )) || status=1

echo; echo "== attention: forward / jvp / backward (bench/bench_attention.py) =="
# functx's kernels vs torch SDPA flash, torch.func.jvp of math attention and JAX (~1-2 min)
timeout 150 python bench/bench_attention.py ${QUICK:+--quick} || status=1

echo; echo "gpu_check: total $(( $(date +%s) - t0 )) s, status $status"
exit $status
