"""The package layout keeps the rules of the house: one subpackage per stage, imports only down the data flow
(sources → corpora → teacher cache → students → metrics → tables), and no Snakemake inside the library.

The checker reads every module's imports with `ast` (lazy imports inside functions included), so a new import
against the flow fails here instead of being caught, or not, in review.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from kdmcse.__main__ import STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "kdmcse"
# The flow, earliest first. Shared modules sit below every stage; a module may import its own layer or lower.
LAYERS = {"shared": 0, "data": 1, "teacher": 2, "train": 3, "evaluate": 4, "report": 5}
SHARED = {"__init__", "__main__", "config", "config_cli", "grid", "io", "errors", "embedding", "gpus"}
MAX_LINES = 450


def layer_of(module: str) -> str:
    """`kdmcse.train.loop` -> train; `kdmcse.io` -> shared."""
    parts = module.split(".")
    assert parts[0] == "kdmcse", module
    if len(parts) == 1 or parts[1] in SHARED:
        return "shared"
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} is neither a stage subpackage ({', '.join(LAYERS)}) nor a shared module")
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement, absolute or relative, at any depth."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from kdmcse.train import loop` imports the module kdmcse.train.loop; `from x import name`, x
            names = {f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names}
            found += [(node.lineno, name) for name in sorted(names)]
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def flow_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every import in `source` (the code of `module`) that runs against the flow or pulls in Snakemake."""
    problems = []
    own = LAYERS[layer_of(module)]
    for line, target in imports_of(source, module, is_package):
        if target.split(".")[0] == "snakemake":
            problems.append(f"{module}:{line} imports {target}: the library never imports Snakemake")
        elif target.split(".")[0] == "kdmcse" and _is_module(target):
            theirs = LAYERS[layer_of(target)]
            if theirs > own:
                problems.append(f"{module}:{line} imports {target}, a later stage ({layer_of(target)}) than its own "
                                f"({layer_of(module)})")
    return problems


def library_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_import_runs_against_the_flow() -> None:
    problems = []
    for path in library_modules():
        problems += flow_violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, module, expected", [
    ("from kdmcse.evaluate.sts import score_suite\n", "kdmcse.train.loop", "a later stage (evaluate)"),
    ("def f():\n    from kdmcse.report import tables\n", "kdmcse.data.prepare", "a later stage (report)"),
    ("from ..train import model\n", "kdmcse.teacher.run", "imports kdmcse.train.model"),
    ("from kdmcse.train import loop\n", "kdmcse.grid", "a later stage (train)"),
    ("import snakemake.utils\n", "kdmcse.config", "never imports Snakemake"),
])
def test_checker_catches_imports_against_the_flow(source: str, module: str, expected: str) -> None:
    problems = flow_violations(source, module)
    assert len(problems) == 1 and expected in problems[0], problems


def test_checker_allows_imports_down_the_flow() -> None:
    ok = ("from kdmcse.teacher.cache import open_teacher_cache\nfrom kdmcse.data import senteval\n"
          "from kdmcse.io import atomic_path\nfrom . import losses\n")
    assert flow_violations(ok, "kdmcse.train.loop") == []


def test_every_module_belongs_to_a_stage_or_the_shared_core() -> None:
    for path in library_modules():
        layer_of(module_name(path))  # raises for a module outside the layout
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= SHARED, f"top-level modules outside the shared core: {sorted(top - SHARED)}"


@pytest.mark.parametrize("stage", [s for s in LAYERS if s != "shared"])
def test_each_stage_package_says_what_it_reads_writes_and_runs(stage: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "Reads" in doc and "Writes" in doc and "python -m kdmcse" in doc, f"kdmcse/{stage}/__init__.py docstring"


def test_cli_stages_live_in_their_subpackages() -> None:
    expected_home = {"download": "data", "extract": "data", "shards": "data", "prepare": "data", "teacher": "teacher",
                     "train": "train", "evaluate": "evaluate", "mteb": "evaluate", "report": "report", "config": "shared",
                     "gpus": "shared"}
    assert set(STAGES) == set(expected_home)
    for stage, module in STAGES.items():
        assert layer_of(module) == expected_home[stage], (stage, module)
        assert callable(importlib.import_module(module).main)


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in library_modules()}
    over = {k: v for k, v in sizes.items() if v > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by responsibility): {over}"
