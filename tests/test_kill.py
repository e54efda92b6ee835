"""A hard kill (SIGKILL of Snakemake and every job, as when a node is lost) and what the README says to do next.

Snakemake's lock survives a SIGKILL, so rerunning the same command stops with a LockException; the README says
to run `snakemake --unlock` and then the same command, and that training resumes from its checkpoint. This test
kills a real run mid-training, and checks each of those statements.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_bert
from e2e_fixtures import senteval_tar, wiki_text

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
CELL = "results/students/wiki/tiny/simcse/margin~0_threshold~off/seed~0"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")  # the fixture mirror is not the Hub's bytes


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc), so the kill can take the jobs as well as Snakemake."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "w"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "wiki1m_for_simcse.txt").write_bytes(wiki_text(n=240))
    (mirror / "senteval.tar").write_bytes(senteval_tar())
    student = build_tiny_bert(work / "models" / "tiny-bert")
    config = {
        "sources": {"mirror": str(mirror)},
        "backbones": {"tiny": {"model": str(student), "lr": 1.0e-3, "batch_size": 8}},
        "train": {"max_steps": 30, "eval_steps": 30, "checkpoint_minutes": 0.001, "log_every": 2, "proj_dim": 16},
        "grid": {"seeds": [0], "main": {"datasets": ["wiki"], "backbones": ["tiny"], "objectives": ["simcse"],
                                         "margin": 0.0, "threshold": "off"}},
        "evaluate": {"transfer": "none", "batch_size": 16},
    }
    (work / "kill.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return work


def snakemake(work: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "kill.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600, env=ENV, **kw)


def test_after_a_hard_kill_unlock_and_rerun_resume_training(workdir):
    target = f"{CELL}/run_meta.json"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", target, "--cores", "2", "--configfile", "kill.yaml"],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                            start_new_session=True)
    checkpoint = workdir / CELL / "checkpoint" / "meta.json"
    deadline = time.time() + 300
    while not checkpoint.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file(), "training never wrote a checkpoint"
    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    killed_at = json.loads(checkpoint.read_text())["step"]
    assert not (workdir / target).exists() and 0 < killed_at < 30

    # Rerunning at once: the lock is still there.
    again = snakemake(workdir, target)
    assert again.returncode != 0 and "LockException" in again.stdout + again.stderr

    # What the README says: unlock, then the same command. Training continues from its checkpoint.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "snakemake --unlock" in readme and "LockException" in readme
    unlock = snakemake(workdir, "--unlock")
    assert unlock.returncode == 0, unlock.stdout[-2000:] + unlock.stderr[-2000:]
    rerun = snakemake(workdir, target)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = (workdir / "logs" / "train" / "wiki" / "tiny" / "simcse" / "margin~0_threshold~off" / "seed~0.log").read_text()
    resumed = re.search(r"resuming from the checkpoint at step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= killed_at
    assert json.loads((workdir / CELL / "run_host.json").read_text())["resumed_from_step"] == int(resumed.group(1))
