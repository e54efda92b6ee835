"""The GPU allocator (`python -m kdmcse gpus`): disjoint devices for concurrent jobs, all-or-none multi-GPU sets,
locks released by killed jobs, and hands off under a scheduler. Real processes and real flock locks; the device
count comes from KDMCSE_GPU_COUNT, so no GPU is needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdmcse.errors import KdmcseError
from kdmcse.gpus import DevicePool, allocation_env, device_pool

ROOT = Path(__file__).resolve().parents[1]

# A job that reports the devices it was given, then holds them until the test lets it go.
HOLDER = """
import os, sys, time
from pathlib import Path
name, folder = sys.argv[1], Path(sys.argv[2])
(folder / f"{name}.tmp").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
(folder / f"{name}.tmp").rename(folder / f"{name}.started")
while not (folder / f"{name}.release").exists():
    time.sleep(0.05)
"""


class Jobs:
    """Jobs started through the allocator, as the rules start them."""

    def __init__(self, tmp: Path, gpus: int):
        self.folder = tmp / "jobs"
        self.folder.mkdir()
        self.env = {**os.environ, "KDMCSE_GPU_COUNT": str(gpus), "KDMCSE_GPU_LOCK_DIR": str(tmp / "locks"),
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("CUDA_VISIBLE_DEVICES", None)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, count: int = 1, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "kdmcse", "gpus", "--count", str(count), *extra, "--",
               sys.executable, "-c", HOLDER, name, str(self.folder)]
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stderr=subprocess.PIPE, text=True)
        return self.procs[name]

    def devices(self, name: str, timeout: float = 60) -> set[str]:
        """The devices job `name` runs on, once it runs."""
        path = self.folder / f"{name}.started"
        deadline = time.monotonic() + timeout
        while not path.exists():
            proc = self.procs[name]
            if proc.poll() is not None:
                pytest.fail(f"job {name} exited ({proc.returncode}) before starting: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"job {name} did not start within {timeout} s")
            time.sleep(0.05)
        return set(path.read_text().split(","))

    def running(self, name: str) -> bool:
        return (self.folder / f"{name}.started").exists()

    def release(self, name: str) -> None:
        (self.folder / f"{name}.release").touch()
        assert self.procs[name].wait(timeout=60) == 0

    def stop_all(self) -> None:
        for name, proc in self.procs.items():
            (self.folder / f"{name}.release").touch()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def jobs(tmp_path):
    made: list[Jobs] = []

    def make(gpus: int) -> Jobs:
        made.append(Jobs(tmp_path, gpus))
        return made[-1]

    yield make
    for j in made:
        j.stop_all()


def test_concurrent_jobs_get_disjoint_devices_and_the_next_one_waits(jobs):
    j = jobs(3)
    for name in "abc":
        j.start(name)
    held = {name: j.devices(name) for name in "abc"}
    assert all(len(d) == 1 for d in held.values())
    assert set().union(*held.values()) == {"0", "1", "2"}  # three jobs at once, one device each
    j.start("d")
    time.sleep(2)
    assert not j.running("d"), "a fourth job started while all three devices were taken"
    j.release("b")
    assert j.devices("d") == held["b"]  # the freed device, and only it


def test_multi_gpu_job_gets_distinct_devices_all_or_none(jobs):
    j = jobs(3)
    j.start("one")
    first = j.devices("one")
    j.start("three", 3)
    time.sleep(2)
    assert not j.running("three")
    # the waiting 3-GPU job holds nothing meanwhile: a 2-GPU job gets the two free devices at once
    j.start("two", 2)
    two = j.devices("two")
    assert len(two) == 2 and not two & first
    j.release("one")
    j.release("two")
    assert j.devices("three") == {"0", "1", "2"}


def test_a_killed_job_frees_its_device(jobs):
    j = jobs(1)
    victim = j.start("victim")
    assert j.devices("victim") == {"0"}
    victim.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock with the process
    victim.wait(timeout=30)
    j.start("next", 1, "--timeout", "30")
    assert j.devices("next") == {"0"}


def test_a_busy_machine_times_out_with_a_clear_error(jobs):
    j = jobs(1)
    j.start("holder")
    j.devices("holder")
    proc = j.start("late", 1, "--timeout", "1")
    assert proc.wait(timeout=60) == 2
    assert "no 1 free GPU(s) among 0" in proc.stderr.read()


def test_more_gpus_than_the_machine_has_fails_before_running(jobs):
    j = jobs(2)
    proc = j.start("big", 3)
    assert proc.wait(timeout=60) == 2
    err = proc.stderr.read()
    assert "needs 3 GPUs but this machine has 2" in err and "train.gpus_per_job" in err
    assert not j.running("big")


def test_under_slurm_the_scheduler_choice_is_kept_and_nothing_is_locked(tmp_path):
    env = {"SLURM_JOB_ID": "17", "CUDA_VISIBLE_DEVICES": "3,1", "KDMCSE_GPU_LOCK_DIR": str(tmp_path / "locks")}
    out, fds = allocation_env(2, ["python"], env)
    assert out == env and fds == [] and not (tmp_path / "locks").exists()
    with pytest.raises(KdmcseError, match="needs 2 GPUs but the scheduler granted 1"):
        allocation_env(2, ["python"], {**env, "CUDA_VISIBLE_DEVICES": "3"})


def test_device_pool_order(tmp_path, monkeypatch):
    assert device_pool({"KDMCSE_GPU_COUNT": "2", "SLURM_JOB_ID": "1"}) == DevicePool(("0", "1"), "count")
    assert device_pool({"SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "1"}) == DevicePool(("1",), "scheduler")
    assert device_pool({"CUDA_VISIBLE_DEVICES": "2, 5"}) == DevicePool(("2", "5"), "visible")
    fake = tmp_path / "bin" / "nvidia-smi"  # what the driver's tool prints on a 2-GPU machine
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert device_pool({}) == DevicePool(("0", "1"), "nvidia-smi")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert device_pool({}) == DevicePool((), "none")
    with pytest.raises(KdmcseError, match="KDMCSE_GPU_COUNT"):
        device_pool({"KDMCSE_GPU_COUNT": "two"})


def test_zero_gpus_hides_the_devices(tmp_path):
    env, fds = allocation_env(1, ["python"], {"KDMCSE_GPU_COUNT": "0", "KDMCSE_GPU_LOCK_DIR": str(tmp_path)})
    assert env["CUDA_VISIBLE_DEVICES"] == "" and fds == []
