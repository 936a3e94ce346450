"""The public surface: everything exported is listed, sorted, and importable from crdtcoord."""

from __future__ import annotations

import inspect

import crdtcoord
import crdtcoord_http


def test_all_is_sorted_and_complete() -> None:
    public = sorted(
        (
            name
            for name, obj in vars(crdtcoord).items()
            if not name.startswith("_") and not inspect.ismodule(obj)
        ),
        key=str.casefold,
    )
    assert sorted(crdtcoord.__all__, key=str.casefold) == public


def test_every_export_has_a_docstring() -> None:
    for name in crdtcoord.__all__:
        obj = getattr(crdtcoord, name)
        if callable(obj):
            assert obj.__doc__, f"crdtcoord.{name} has no docstring"


def test_the_http_package_exports_its_public_names_with_docstrings() -> None:
    public = sorted(
        name
        for name, obj in vars(crdtcoord_http).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    )
    assert sorted(crdtcoord_http.__all__) == public
    for name in crdtcoord_http.__all__:
        assert getattr(crdtcoord_http, name).__doc__, f"crdtcoord_http.{name} has no docstring"


def test_the_core_never_imports_aiohttp() -> None:
    """The engine, host, storage and runtime run without the HTTP layer (architecture rule)."""
    import subprocess
    import sys

    code = (
        "import sys, crdtcoord, crdtcoord.runtime, crdtcoord.storage, crdtcoord.sim;"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
