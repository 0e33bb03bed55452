"""The package's shape: no import cycle, sampling independent of training, the command line
built from the library's one config object, and ruff-clean formatted code."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import gmx_deepbackmap
from gmx_deepbackmap.cli import main
from gmx_deepbackmap.config import DEFAULTS, SamplerConfig

PACKAGE = Path(gmx_deepbackmap.__file__).resolve().parent


def package_imports() -> dict[str, set[str]]:
    """Module name -> the package modules it imports (at module level or inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                graph[name] |= {f"{target}.{a.name}" for a in node.names} | {target}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name.startswith("gmx_deepbackmap")}
    return {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}


def runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for type hints never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_no_import_cycle():
    graph = package_imports()
    for name in graph:
        assert name not in reachable(graph, name), f"{name} imports itself back"


def test_sampling_imports_nothing_from_training():
    graph = package_imports()
    for name in [n for n in graph if n.startswith("gmx_deepbackmap.sampling")]:
        assert "gmx_deepbackmap.training" not in reachable(graph, name), name


def test_backmap_help_shows_the_sampler_config_defaults():
    text = " ".join(CliRunner().invoke(main, ["backmap", "--help"], terminal_width=200).output.split())
    for field in dataclasses.fields(SamplerConfig):
        default = getattr(DEFAULTS, field.name)
        if isinstance(default, bool):
            assert field.metadata["flag"] in text
        elif default is not None:
            option = f"--{field.name.replace('_', '-')}"
            shown = re.search(rf"{option} .*?\[default: ([^;\]]+)", text)
            assert shown and shown.group(1) == str(default), (option, shown and shown.group(1))


def test_config_is_checked_and_round_trips():
    assert SamplerConfig.from_dict(DEFAULTS.as_dict()) == DEFAULTS
    for bad in ({"orientations": 0}, {"thermal": "all"}, {"temperature": 0.0}, {"sweeps": 3}):
        try:
            SamplerConfig.from_dict(bad)
        except gmx_deepbackmap.errors.InputError as exc:
            assert list(bad)[0] in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


def test_the_tree_is_ruff_clean_and_formatted():
    """`ruff check` and `ruff format` (adopted in one formatting-only commit) stay clean."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (the test extra installs it)")
    root = PACKAGE.parent
    for command in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        done = subprocess.run(command, cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command[1:])}:\n{done.stdout}{done.stderr}"
