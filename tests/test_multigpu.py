"""Every GPU of a node: `snakemake --cores … --resources gpu=N` runs several GPU jobs at once, each on devices of
its own, and a `train.gpus_per_job: 2` student runs torchrun over two devices.

The real `snakemake` CLI on the trimmed tiny config, on a machine that the allocator is told has 3 GPUs
(KDMCSE_GPU_COUNT; the stages themselves run on CPU). A `python` first on PATH records, for every stage process the
rules start, when it ran and with which CUDA_VISIBLE_DEVICES, independently of the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e_fixtures import copy_workflow, fixture_files, gpu_stage_runs, overlapping, small_config, trace_python
from http_server import FixtureServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
GPUS = 3


@pytest.fixture(scope="module")
def multigpu_run(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("multigpu")
    copy_workflow(work, ROOT)
    trace = work / "trace.tsv"
    trace_python(work / "bin", trace)
    with FixtureServer(fixture_files()) as server:
        config = small_config(work, server.url("/"))
        config["train"]["gpus_per_job"] = 2
        (work / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, "KDMCSE_GPU_COUNT": str(GPUS), "KDMCSE_GPU_LOCK_DIR": str(work / "gpu-locks"),
               "PATH": f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
            env.pop(var, None)
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "results/tables/main.tex", "--cores", "4", "--resources",
             f"gpu={GPUS}", "--configfile", "e2e.yaml"],
            cwd=work, env=env, capture_output=True, text=True, timeout=900,
        )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"snakemake failed:\n{out[-6000:]}\n{logs[-10000:]}")
    return work, gpu_stage_runs(trace)


def test_every_gpu_job_ran_on_devices_of_its_own(multigpu_run):
    work, runs = multigpu_run
    stages = sorted(r.stage for r in runs)
    assert stages == ["evaluate", "evaluate", "teacher", "train", "train"], stages
    for run in runs:
        assert run.devices is not None, f"{run.stage} ran without CUDA_VISIBLE_DEVICES: {run.args[:200]}"
        want = 2 if run.stage == "train" else 1
        assert len(set(run.devices)) == want and set(run.devices) <= {str(i) for i in range(GPUS)}, run
    for a, b in overlapping(runs):
        assert not set(a.devices) & set(b.devices), f"{a.stage} and {b.stage} shared a GPU while both ran"
    # the point of it all: GPU jobs ran side by side (teacher beside the SimCSE student, the KDMCSE student beside
    # the SimCSE evaluation); a single-GPU cap would have run them one after another
    assert overlapping(runs), [(r.stage, r.start, r.end) for r in runs]


def test_the_two_gpu_student_ran_torchrun_inside_its_allocation(multigpu_run):
    work, runs = multigpu_run
    trains = [r for r in runs if r.stage == "train"]
    assert len(trains) == 2, runs  # torchrun itself ran under the traced `python`, inside the allocation
    for run in trains:
        assert "--nproc_per_node=2" in run.args and len(set(run.devices or ())) == 2, run
    metas = sorted((work / "results" / "students").rglob("run_meta.json"))
    assert len(metas) == 2
    assert all(json.loads(m.read_text())["world_size"] == 2 for m in metas)
    assert (work / "results" / "tables" / "main.tex").stat().st_size > 0
