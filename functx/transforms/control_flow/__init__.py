"""Structured control flow: cond / switch, while_loop, scan / fori_loop, checkpoint.

Each primitive holds closed sub-graphs (the user's functions traced once, closure-converted
so every trace sees their captured values) and has one module with all its rules."""
from .cond import cond, switch, cond_p  # noqa: F401
from .while_loop import while_loop, while_loop_p  # noqa: F401
from .scan import scan_p  # noqa: F401
from .scan_revolve import scan_tangent_p, scan_revolve_p  # noqa: F401
from .loops import scan, fori_loop  # noqa: F401
from .checkpoint import checkpoint, remat, checkpoint_name, checkpoint_policies, checkpoint_p, name_p  # noqa: F401
