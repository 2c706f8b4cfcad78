"""The fusion compiler's backend-independent half, shared by the Triton (GPU) and C++ (CPU)
backends: symbolic index math (indexing.py), one fusion group as a loop nest over an ops
handler (kernel.py), the partition into groups (scheduler.py), the torch evaluation of a
kernel body (torch_ops.py) and the host wrapper + explain report (compiled.py)."""
