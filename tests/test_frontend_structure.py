"""The front end's structure: the lowering tables reject a second registration of an op,
and every lowering module imports on its own. (Import cycles: tests/test_structure.py.)"""
import importlib
import pathlib

import pytest
import torch

import functx  # noqa: F401  (fills the tables)
from functx.frontend.lowerings import registry

aten = torch.ops.aten
FRONTEND = pathlib.Path(functx.__file__).parent / "frontend"
LOWERING_MODULES = sorted(p.stem for p in (FRONTEND / "lowerings").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("decorator, table", [(registry.register, registry.LOWERINGS),
                                              (registry.register_special, registry.SPECIAL)])
def test_registering_an_op_twice_raises(decorator, table):
    op = aten.relu.default if table is registry.LOWERINGS else aten.copy_.default
    assert op in table
    before = table[op]
    with pytest.raises(ValueError, match=r"aten\.(relu|copy_)\.default is registered twice"):
        decorator(op)(lambda *a: None)
    assert table[op] is before


def test_only_as_strided_is_in_both_tables():
    # A SPECIAL entry shadows a lowering at dispatch; as_strided's lowering replays view chains.
    assert set(registry.SPECIAL) & set(registry.LOWERINGS) == {aten.as_strided.default}


@pytest.mark.parametrize("name", LOWERING_MODULES)
def test_lowering_module_imports(name):
    importlib.import_module(f"functx.frontend.lowerings.{name}")
