"""functx in one page: compose transforms over ordinary PyTorch code, jit it, explain it."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import functx

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
params = {k: v.detach() for k, v in model.named_parameters()}


def loss(params, x, y):
    pred = functx.functional_call(model, params, (x,))
    return F.mse_loss(pred, y)


x, y = torch.randn(64, 4), torch.randn(64, 1)

# Per-sample gradients: vmap over the batch of grad of a single-example loss.
per_sample = functx.jit(functx.vmap(functx.grad(loss), in_axes=(None, 0, 0)))
grads = per_sample(params, x[:, None], y[:, None])
print("per-sample grad of the first weight:", tuple(grads["0.weight"].shape))

# Checked against torch.func:
ref = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x[:, None], y[:, None])
print("matches torch.func:", all(torch.allclose(grads[k], ref[k], atol=1e-6) for k in ref))


# Laplacian of a scalar field (PINNs): vmap of the trace of the Hessian.
def u(p):
    return torch.sin(p).prod() + p.pow(2).sum()


laplacian = functx.jit(functx.vmap(lambda p: torch.trace(functx.hessian(u)(p))))
pts = torch.randn(5, 3)
print("laplacian:", laplacian(pts))

# Forward over reverse: a Hessian-vector product.
hvp = functx.jvp(functx.grad(u), (pts[0],), (torch.ones(3),))[1]
print("hvp:", hvp)

# What jit compiles: the graph, any fallbacks, the generated code.
print(functx.explain(lambda p: torch.softmax(p, -1).sum(0))(pts))
