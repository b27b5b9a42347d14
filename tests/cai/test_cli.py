"""The README is the manual: its command list is `cai --help`'s, and its layout names every
module of every package."""

from __future__ import annotations

import re
from pathlib import Path

from cai.cli import commands

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL)


def test_the_readme_lists_every_command_and_no_other():
    listed = [line.split()[1] for line in _blocks(_section("Commands"))[0].splitlines()
              if line.startswith("cai ")]
    assert sorted(set(listed)) == sorted(commands())
    assert len(listed) == len(set(listed)), "list each command once"


def test_every_command_is_registered_by_the_package_that_owns_it():
    from cai import cli

    owners: dict[str, str] = {}
    for register in cli.REGISTRATIONS:
        assert _names(register, owners), f"{register.__module__} registers nothing"
    assert owners["bench"] == owners["bench-serving"] == owners["bench-dpo"] == "benchmarks.cli"
    assert owners["repository"] == owners["publish"] == "serving.cli"
    assert owners["topics"] == "streams.cli" and owners["eval"] == "scoring.cli"
    assert owners["grid"] == owners["run"] == "cai.cli" and owners["worker"] == "agents.cli"


def _names(register, owners: dict) -> list[str]:
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    for name in sub.choices:
        owners[name] = register.__module__
    return list(sub.choices)


def test_the_layout_names_every_module():
    tree = _blocks(_section("Layout"))[1]
    listed, package = set(), None
    for line in tree.splitlines():
        if not line.strip():
            continue
        first = line.split()[0]
        if not line.startswith(" "):
            package = first.rstrip("/")
            listed.add(package)
        else:
            listed.add(f"{package}/{first.rstrip('/')}")
    missing = []
    for init in ROOT.glob("*/__init__.py"):
        if init.parent.name == "tests":
            continue
        for path in init.parent.rglob("*.py"):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py":
                others = [p for p in path.parent.glob("*.py") if p.name != "__init__.py"]
                if path.parent != init.parent and not others:
                    rel = rel.parent  # a package that is one module, e.g. stack/kafka/
                else:
                    continue
            if rel.as_posix() not in listed:
                missing.append(rel.as_posix())
    assert not missing, f"README layout misses {sorted(missing)}"
