"""The examples in the docstrings run and print what they show (doctest over every module)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tl_lightning

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(tl_lightning.__path__, prefix="tl_lightning.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"
