"""Compile generated matmul-template kernels for sm_90 without a GPU (Triton's own
compiler and ptxas, no launch): a check that the Triton source the interpreter runs is also
valid GPU code. Run by tests/test_matmul_template.py (slow) in a subprocess, since the test
process has Triton in interpreter mode. Prints one line per kernel; exits 1 on a failure."""
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = r'''
import os, json, sys
os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, sys.argv[1])
import torch, torch.nn.functional as F, functx
cases = [lambda x, w, b: F.gelu(x @ w + b), lambda x, w, b: F.relu(torch.exp(x) @ w + b),
         lambda x, w, b: torch.einsum("bij,bjk->bik", torch.tanh(x).reshape(3, 11, 45), w[None].expand(3, 45, 20))]
out = []
for dt in (torch.float32, torch.float16, torch.bfloat16):
    for f in cases:
        x, w, b = torch.randn(33, 45).to(dt), torch.randn(45, 20).to(dt), torch.randn(20).to(dt)
        for g in functx.explain(f, backend="triton")(x, w, b).groups:
            if g.kind == "template":      # the GPU source has no interpreter upcast
                out.append((g.source.replace("a.to(tl.float32), b.to(tl.float32), acc", "a, b, acc"),
                            str(dt).split(".")[1]))
print(json.dumps(out))
'''


def main():
    import json
    srcs = json.loads(subprocess.run([sys.executable, "-c", GEN, ROOT], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sys.path.insert(0, ROOT)
    from functx.compile.triton.runtime import HEADER_GPU
    failed = 0
    for src, dtype in srcs:
        name = re.search(r"def (\w+)\(", src).group(1)
        sig, consts = {}, {}
        for a in re.search(r"def \w+\((.*)\):", src).group(1).split(", "):
            n = a.split(":")[0]
            if "constexpr" in a:
                consts[n] = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8,
                                      "PRECISION": "tf32" if dtype == "float32" else "ieee"}[n]
                sig[n] = "constexpr"
            elif "ptr" in n:
                sig[n] = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}[dtype] \
                    if n in ("a_ptr", "b_ptr") else "*fp32"
            else:
                sig[n] = "i32"
        path = os.path.join(tempfile.mkdtemp(), "kernel.py")
        with open(path, "w") as f:
            f.write(HEADER_GPU + src)
        spec = importlib.util.spec_from_file_location("aot_kernel", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        try:
            triton.compile(ASTSource(getattr(mod, name), sig, consts), target=GPUTarget("cuda", 90, 32))
            print(f"{name} {dtype}: compiled for sm_90")
        except Exception as e:      # report every failure, then fail
            failed += 1
            print(f"{name} {dtype}: FAILED {type(e).__name__}: {e}")
    return 1 if failed or not srcs else 0


if __name__ == "__main__":
    sys.exit(main())
