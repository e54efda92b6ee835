"""The profiles mean what they say on every Snakemake the project allows: the SLURM plan asks for each rule's
needs (from the config) with no global GPU cap, and min_version, pyproject.toml and the profile file names agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# First Snakemake release that reads each profile file name (9.0-9.18 read only config.yaml).
READ_SINCE = {"profile.yaml": Version("9.19"), "config.yaml": Version("9.0")}


def dry_run_jobs(*args: str) -> list[tuple[str, dict[str, str], str]]:
    """(rule, resources, shell command) of every job a dry run plans."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "results/tables/main.tex", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    jobs = []
    for block in re.split(r"^rule ", out, flags=re.M)[1:]:
        rule = block.split(":", 1)[0]
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        pairs = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs.append((rule, pairs, shell.group(1) if shell else ""))
    return jobs


@pytest.fixture(scope="module")
def slurm_plan():
    # a dry run caps threads at --cores (1 unless given); a real cluster run has no such cap
    return dry_run_jobs("--profile", "profiles/slurm", "--cores", "64", "--config", 'train={"gpus_per_job": 2}',
                        'resources={"evaluate_sts": {"runtime": 45}}')


def test_slurm_plan_trains_100_students_each_on_all_its_gpus(slurm_plan):
    train = [res for rule, res, _ in slurm_plan if rule == "train"]
    assert len(train) == 100  # the default grid: 20 cells x 5 seeds (tests/test_dag.py)
    # a global `resources: gpu=1` (in the workflow profile, which Snakemake applies to cluster runs too) would
    # both serialise the queue and shrink each job to gpu=1
    assert {r["gpu"] for r in train} == {"2"}
    assert {(r["mem_mb"], r["runtime"], r["slurm_partition"]) for r in train} == {("32000", "720", "gpu")}


def test_slurm_plan_maps_each_rule_to_its_config_needs(slurm_plan):
    seen = {}
    for rule, res, shell in slurm_plan:
        seen.setdefault(rule, (res, shell))
    teacher, shell = seen["teacher"]
    assert (teacher["gpu"], teacher["mem_mb"], teacher["runtime"], teacher["slurm_partition"]) == (
        "1", "32000", "240", "gpu")
    assert "--threads 16" in shell  # threads (-> --cpus-per-task) from resources.teacher.threads
    assert seen["evaluate_sts"][0]["runtime"] == "45"  # a --config override reaches the job
    assert seen["evaluate_transfer"][0]["gpu"] == "1"
    for rule in ("extract", "prepare_wiki", "prepare_captions"):
        assert "gpu" not in seen[rule][0] and seen[rule][0]["slurm_partition"] == "cpu", rule
    assert seen["extract"][0]["runtime"] == "120" and seen["prepare_wiki"][0]["mem_mb"] == "8000"
    # the GPU stages start through the allocator, and torchrun inside it for a multi-GPU student
    assert seen["train"][1].startswith(
        "python -m kdmcse gpus --count 2 -- python -m torch.distributed.run --standalone --nproc_per_node=2 -m kdmcse train")
    assert seen["teacher"][1].startswith("python -m kdmcse gpus --count 1 -- python -m kdmcse teacher")


def test_the_workflow_profile_sets_no_resources():
    # Snakemake applies profiles/default to every run, and its top-level keys override those of --profile
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "profile.yaml").read_text())
    assert not {"resources", "default-resources", "set-resources", "set-threads"} & set(profile), profile


def test_min_version_pyproject_and_profile_file_names_agree():
    snakefile = (ROOT / "Snakefile").read_text()
    min_version = Version(re.search(r'min_version\("([\d.]+)"\)', snakefile).group(1))
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name == "snakemake")
    lower = min(Version(s.version) for s in req.specifier if s.operator == ">=")
    assert lower == min_version, f"pyproject.toml allows snakemake {req.specifier}, the Snakefile needs {min_version}"
    for folder in sorted(p for p in (ROOT / "profiles").iterdir() if p.is_dir()):
        names = [p.name for p in folder.glob("*.yaml")]
        assert len(names) == 1 and names[0] in READ_SINCE, f"{folder}: one profile.yaml (or config.yaml): {names}"
        assert READ_SINCE[names[0]] <= min_version, (
            f"{folder}/{names[0]} is read only by Snakemake >= {READ_SINCE[names[0]]}, but {min_version} is allowed")
    import snakemake

    assert Version(snakemake.__version__.split("+")[0]) >= min_version


def test_readme_slurm_row_is_the_command_the_slurm_test_runs():
    readme = (ROOT / "README.md").read_text()
    assert "snakemake --profile profiles/slurm results/tables/main.tex" in readme
    assert '"--profile", "profiles/slurm", "results/tables/main.tex"' in (ROOT / "tests" / "test_slurm.py").read_text()
