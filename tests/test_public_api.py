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


def test_http_package_is_importable() -> None:
    assert crdtcoord_http.__all__ == []
