"""The package's public names are those of the API: `__all__`, nothing the implementation imports."""

import types
import typing

import alike


def test_public_names_are_all() -> None:
    public = {n for n in dir(alike) if not n.startswith("_")}
    assert public == {n for n in alike.__all__ if not n.startswith("_")}
    assert len(alike.__all__) == len(set(alike.__all__))
    for name in alike.__all__:
        assert hasattr(alike, name), name


def test_no_implementation_names_leak() -> None:
    names = set(dir(alike))
    leaked = {"os", "dataclass", "annotations", "datetime", "typing"} | set(typing.__all__)
    assert not names & leaked, sorted(names & leaked)
    modules = [n for n in names if not n.startswith("_") and isinstance(getattr(alike, n), types.ModuleType)]
    assert modules == []


def test_star_import_gives_the_api() -> None:
    ns: dict = {}
    exec("from alike import *", ns)
    assert {n for n in ns if n != "__builtins__"} == set(alike.__all__)
    assert ns["Store"] is alike.Store and ns["Locked"] is alike.Busy


def test_type_hints_resolve() -> None:
    # Annotations name the underscored imports; they still resolve at run time.
    hints = typing.get_type_hints(alike.Store.backup)
    assert hints["vm"] is str
    assert typing.get_type_hints(alike.Version)["id"] is str
