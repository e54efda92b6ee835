"""The conda environments of the rules (`--sdm conda`): their pip step works from where Snakemake copies the file,
and their pins match pyproject.toml and, where the suite was installed with them (`.ci/run` sets
KDMCSE_PINNED_ENV=1), the versions this test suite runs with."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "kdmcse.yaml"
# env file -> the pyproject extras (beside the core dependencies) it must pin
ENV_FILES = {"kdmcse.yaml": ["demo"], "shards.yaml": ["demo", "cc1m"]}


def pip_lines(env: dict) -> list[str]:
    return [line for dep in env["dependencies"] if isinstance(dep, dict) for line in dep.get("pip", [])]


def copy_like_snakemake(workdir: Path, env_file: Path = ENV_FILE) -> Path:
    """Snakemake creates the environment from a copy at .snakemake/conda/<hash>.yaml of the working directory."""
    digest = hashlib.md5(env_file.read_bytes()).hexdigest()
    target = workdir / ".snakemake" / "conda" / f"{digest}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(env_file, target)
    return target


def conda_pip_step(env_copy: Path) -> subprocess.CompletedProcess:
    """What `conda env create --file <copy>` does with the pip section: write the lines to a requirements file
    beside the copy and run pip in that folder. Offline and as a dry run: every pin must already be installed."""
    env = yaml.safe_load(env_copy.read_text(encoding="utf-8"))
    req = env_copy.parent / "condaenv.test.requirements.txt"
    req.write_text("\n".join(pip_lines(env)) + "\n", encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "-U", "-r", req.name,
         "--exists-action=b", "--disable-pip-version-check"],
        cwd=env_copy.parent, capture_output=True, text=True, timeout=300,
    )


PINNED = pytest.mark.skipif(
    os.environ.get("KDMCSE_PINNED_ENV") != "1",
    reason="installed without the env files' pins as constraints (.ci/run installs with them, KDMCSE_PINNED_ENV=1)")


@PINNED  # offline, the dry run can only find the pinned versions among the installed ones
@pytest.mark.parametrize("env_name", list(ENV_FILES))
def test_pip_step_runs_from_the_copied_location(env_name, tmp_path):
    # a project folder as a user's clone has it, so that a relative path in the file would find the project
    project = tmp_path / "clone"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "kdmcse", "envs"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, project / name)
    proc = conda_pip_step(copy_like_snakemake(project, ROOT / "envs" / env_name))
    assert proc.returncode == 0, (
        f"pip step of {env_name} fails from .snakemake/conda/ (a relative path, or a pin that differs from "
        f"the installed version: update the pin):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert "Would install" not in proc.stdout, proc.stdout  # nothing to install: the pins are what we run with


def test_pip_step_catches_a_path_relative_to_the_file(tmp_path):
    # the check above can fail: the old `-e ..` (the project, seen from envs/) breaks from the copy
    project = tmp_path / "clone"
    (project / "envs").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n', encoding="utf-8")
    copy = project / ".snakemake" / "conda" / "x.yaml"
    copy.parent.mkdir(parents=True)
    copy.write_text(yaml.safe_dump({"dependencies": ["pip", {"pip": ["-e .."]}]}), encoding="utf-8")
    proc = conda_pip_step(copy)
    assert proc.returncode != 0 and ".snakemake" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def env_pins(env_file: Path) -> dict[str, str]:
    pins = {}
    for line in pip_lines(yaml.safe_load(env_file.read_text(encoding="utf-8"))):
        req = Requirement(line)
        spec = str(req.specifier)
        assert re.fullmatch(r"==[0-9][0-9A-Za-z.+!-]*", spec), f"{line!r}: pin an exact version (name==x.y.z)"
        pins[canonical(req.name)] = spec[2:]
    return pins


@pytest.mark.parametrize("env_name", list(ENV_FILES))
def test_every_pin_is_exact_and_allowed_by_pyproject(env_name):
    env_file = ROOT / "envs" / env_name
    env = yaml.safe_load(env_file.read_text(encoding="utf-8"))
    pins = env_pins(env_file)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [r for extra in ENV_FILES[env_name] for r in project["optional-dependencies"][extra]]
    for req in map(Requirement, project["dependencies"] + extras):
        name = canonical(req.name)
        if name == "snakemake":  # runs the rules, not inside them
            continue
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in {env_name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert re.fullmatch(r"python=3\.\d+", python), python
    low = re.search(r">=\s*(\d+\.\d+)", project["requires-python"]).group(1)
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, low.split("."))), python


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_shards_env_keeps_the_main_env_pins():
    main, shards = env_pins(ENV_FILE), env_pins(ROOT / "envs" / "shards.yaml")
    differ = {k: (v, shards.get(k)) for k, v in main.items() if shards.get(k) != v}
    assert not differ, f"envs/shards.yaml must pin what envs/kdmcse.yaml pins: {differ}"


@PINNED
@pytest.mark.parametrize("env_name", list(ENV_FILES))
def test_the_suite_runs_with_the_pinned_versions(env_name):
    for name, version in env_pins(ROOT / "envs" / env_name).items():
        assert importlib.metadata.version(name) == version, (
            f"{env_name} pins {name}=={version} but the tests run with {importlib.metadata.version(name)}")
