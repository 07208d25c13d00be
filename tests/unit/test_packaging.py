"""The wheel ships both apps, the kernel they share and the Django Tasks backend, each with
its type marker."""

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("inbox_outbox", "outbox", "inbox", "inbox_outbox_tasks")


def test_the_package_list_includes_both_apps_and_the_kernel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set(find_packages(ROOT, include=config["packages"]["find"]["include"]))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for name in LIBRARY
        for init in (ROOT / name).rglob("__init__.py")
    }
    assert on_disk <= shipped
    assert {p.split(".")[0] for p in shipped} == set(LIBRARY)  # nothing else: no tests, no project
    for name in LIBRARY:
        assert "py.typed" in config["package-data"][name]
        assert (ROOT / name / "py.typed").exists()
