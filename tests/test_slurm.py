"""The workflow on a real Slurm cluster, through `snakemake --profile profiles/slurm` and
snakemake-executor-plugin-slurm: a single node (munged, slurmctld, slurmd started here) with 2 GPUs as GRES.

One module-scoped scenario on the trimmed tiny config: a first run in which a training job is cancelled with
`scancel` (the run must fail and say so), then a rerun that finishes the tables; meanwhile the same config runs
locally, and the metrics of both must be identical (same seeds, seeded random-init teacher). A `python` first on
PATH traces every stage process with its CUDA_VISIBLE_DEVICES, which Slurm sets per job.

Skips only where Slurm cannot run here (not installed, not root); with KDMCSE_REQUIRE_SLURM=1 (set by .ci/run)
it fails instead, so CI cannot pass without running it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from e2e_fixtures import copy_workflow, fixture_files, gpu_stage_runs, overlapping, small_config, trace_python
from http_server import FixtureServer
from slurm_cluster import SlurmCluster, SlurmUnavailable

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def unavailable(reason: str) -> None:
    if os.environ.get("KDMCSE_REQUIRE_SLURM") == "1":
        pytest.fail(f"KDMCSE_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    c = SlurmCluster(gpus=2, cpus=4)
    try:
        c.start()
    except SlurmUnavailable as exc:
        c.stop()
        unavailable(f"cannot start a Slurm cluster here: {exc}")
    yield c
    c.stop()


def workdir(base: Path, name: str, mirror: str) -> Path:
    work = base / name
    work.mkdir()
    copy_workflow(work, ROOT)
    (work / "e2e.yaml").write_text(yaml.safe_dump(small_config(work, mirror), sort_keys=False))
    return work


def base_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for var in ("KDMCSE_GPU_COUNT", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        env.pop(var, None)
    return env


class CancelFirstTraining(threading.Thread):
    """Watches the queue and `scancel`s the first training job once its stage has started (its log exists)."""

    def __init__(self, cluster: SlurmCluster, work: Path):
        super().__init__(daemon=True)
        self.cluster, self.work, self.cancelled, self.done = cluster, work, None, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            running = [j for j in self.cluster.squeue() if j["comment"].startswith("rule_train")
                       and j["state"] == "RUNNING"]
            if running and any((self.work / "logs" / "train").rglob("*.log")):
                subprocess.run(["scancel", running[0]["id"]], env=self.cluster.env, check=True)
                self.cancelled = running[0]
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def scenario(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("slurm")
    with FixtureServer(fixture_files()) as server:
        local = workdir(base, "local", server.url("/"))
        on_slurm = workdir(base, "slurm", server.url("/"))
        # the local reference runs meanwhile: the Slurm runs mostly wait on the queue
        local_proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "results/tables/main.tex", "--cores", "2", "--configfile", "e2e.yaml"],
            cwd=local, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        trace = base / "trace.tsv"
        trace_python(base / "bin", trace)
        env = {**base_env(), **{"SLURM_CONF": cluster.env["SLURM_CONF"]},
               "PATH": os.pathsep.join([str(base / "bin"), str(cluster.bin), os.environ["PATH"]])}
        command = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "results/tables/main.tex",
                   "--configfile", "e2e.yaml",
                   # this cluster keeps no accounting database (no sacct); squeue keeps finished jobs (MinJobAge)
                   "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]

        def run() -> subprocess.CompletedProcess:
            return subprocess.run(command, cwd=on_slurm, env=env, capture_output=True, text=True, timeout=600)

        watcher = CancelFirstTraining(cluster, on_slurm)
        watcher.start()
        try:
            first = run()
            watcher.done.set()
            trained_first = sorted(p.parent for p in (on_slurm / "results" / "students").rglob("run_meta.json"))
            second = run()
            local_out = local_proc.communicate(timeout=600)[0]
        finally:
            watcher.done.set()
            if local_proc.poll() is None:
                local_proc.kill()
                local_proc.wait()
    result = {"local": local, "slurm": on_slurm, "first": first, "second": second, "cancelled": watcher.cancelled,
              "trained_first": trained_first,
              "runs": gpu_stage_runs(trace) if trace.exists() else [], "cluster": cluster}
    if local_proc.returncode != 0:
        pytest.fail(f"local reference run failed:\n{local_out[-6000:]}")
    return result


def explain(proc: subprocess.CompletedProcess, work: Path, cluster: SlurmCluster) -> str:
    logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))
                     + sorted((work / "logs").rglob("*.log")))
    return f"{(proc.stdout + proc.stderr)[-6000:]}\n{logs[-8000:]}\n{cluster.logs()}"


def test_a_cancelled_job_fails_the_run_with_a_clear_message(scenario):
    first, cancelled = scenario["first"], scenario["cancelled"]
    assert cancelled is not None, "no training job was seen running to cancel\n" + explain(
        first, scenario["slurm"], scenario["cluster"])
    assert first.returncode != 0, "the run succeeded although one of its jobs was cancelled"
    out = first.stdout + first.stderr
    assert "Error in rule train" in out, explain(first, scenario["slurm"], scenario["cluster"])
    assert f"SLURM-job '{cancelled['id']}' failed, SLURM status is: 'CANCELLED'" in out, out[-4000:]


def test_the_rerun_finishes_with_the_local_metrics(scenario):
    second = scenario["second"]
    assert second.returncode == 0, explain(second, scenario["slurm"], scenario["cluster"])
    local, on_slurm = scenario["local"], scenario["slurm"]
    assert (on_slurm / "results" / "tables" / "main.tex").stat().st_size > 0
    names = sorted(p.relative_to(local) for p in (local / "results" / "metrics").rglob("*.json"))
    assert len(names) == 2  # SimCSE and KDMCSE
    for name in names:
        ours, theirs = (json.loads((w / name).read_text()) for w in (on_slurm, local))
        assert ours == theirs, f"{name} differs between the Slurm and the local run"
    # the cancelled student is among those the rerun trained, on the cluster
    trained = sorted(p.parent for p in (on_slurm / "results" / "students").rglob("run_meta.json"))
    assert len(trained) == 2 and len(scenario["trained_first"]) < 2, (trained, scenario["trained_first"])


def test_gpu_jobs_ran_at_once_on_the_devices_slurm_gave_them(scenario):
    runs = scenario["runs"]
    assert {r.stage for r in runs} == {"teacher", "train", "evaluate"}, runs
    for run in runs:
        assert run.devices is not None and len(run.devices) == 1 and run.devices[0] in {"0", "1"}, run
    pairs = overlapping(runs)
    assert pairs, "no two GPU jobs ran at the same time: " + str([(r.stage, r.start, r.end) for r in runs])
    for a, b in pairs:
        assert a.devices != b.devices, f"{a.stage} and {b.stage} ran at once on the same GPU {a.devices}"
