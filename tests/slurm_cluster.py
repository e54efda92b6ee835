"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's `munge` and `slurm-wlm`.

Config, state, logs and the munge key live in one temp folder; the daemons run in the foreground as children of
the test, so they are stopped by PID. The node declares 2 GPUs as GRES backed by /dev/null and /dev/zero: Slurm
then hands each job its own CUDA_VISIBLE_DEVICES exactly as on a GPU node, which is what the workflow sees.

    with SlurmCluster(gpus=2) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
NODE = "kdmcse-node"


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed here, or its daemons cannot run (the reason is the message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_reason() -> str | None:
    """Why a cluster cannot be started on this machine, or None."""
    missing = [d for d in DAEMONS + ("sbatch", "squeue", "scancel", "srun") if shutil.which(d) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs (run the tests as root, as CI does)"
    try:
        import pwd

        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (installed by Debian's munge package)"
    return None


class SlurmCluster:
    def __init__(self, gpus: int = 2, cpus: int = 4, mem_mb: int = 64000) -> None:
        self.gpus, self.cpus, self.mem_mb = gpus, cpus, mem_mb
        self.root = Path(tempfile.mkdtemp(prefix="kdmcse-slurm-"))  # not under pytest's 0700 folders: munge reads it
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- set-up

    def _write_config(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log", "bin"):
            (r / sub).mkdir()
        os.chmod(r, 0o755)
        key_dir = r / "munge" / "key"
        key_dir.mkdir()
        (key_dir / "munge.key").write_bytes(os.urandom(1024))
        os.chmod(key_dir / "munge.key", 0o400)
        os.chmod(key_dir, 0o700)
        os.chmod(r / "munge", 0o755)  # munged insists the socket's folder is traversable by all
        for path in (r / "munge", key_dir, key_dir / "munge.key"):
            shutil.chown(path, "munge", "munge")
        self.socket = r / "munge" / "munge.sock"
        host = socket.gethostname()
        self.conf.write_text(f"""\
ClusterName=kdmcse-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={NODE} MaxTime=INFINITE State=UP
""")
        devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"][: self.gpus]
        (r / "gres.conf").write_text("".join(f"NodeName={NODE} Name=gpu File={d}\n" for d in devices))
        # snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable, SLURM_CONF included, before its
        # srun inside the job; a site whose slurm.conf is not in /etc/slurm needs it back, and so does this one
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which('srun')} \"$@\"\n")
        srun.chmod(0o755)

    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, **kw)

    def start(self) -> SlurmCluster:
        reason = missing_reason()
        if reason:
            raise SlurmUnavailable(reason)
        self._write_config()
        r = self.root
        self._spawn("munged", ["munged", "-F", f"--socket={self.socket}",
                               f"--key-file={r / 'munge' / 'key' / 'munge.key'}", f"--log-file={r / 'munge' / 'log'}",
                               f"--pid-file={r / 'munge' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'seed'}"],
                    user="munge", group="munge", extra_groups=[])
        self._wait(lambda: self.socket.exists(), "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(lambda: self.node_state() == "idle", "the node to come up idle")
        return self

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                raise SlurmUnavailable(f"waiting for {what}: {'exited ' + str(dead) if dead else 'timed out'}\n"
                                       + self.logs())
            time.sleep(0.3)

    def node_state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return out.stdout.strip().split("\n")[0] if out.returncode == 0 else ""

    # --- use

    def squeue(self) -> list[dict[str, str]]:
        """Every job slurmctld knows (finished ones too, for MinJobAge): id, state, comment."""
        out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k"], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return [dict(zip(("id", "state", "comment"), line.split("|", 2))) for line in out.splitlines() if line]

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "log"]:
            if path.is_file():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    # --- tear-down

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(j["state"] in ("RUNNING", "PENDING", "COMPLETING")
                                                      for j in self._jobs_or_empty()):
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)

    def _jobs_or_empty(self) -> list[dict[str, str]]:
        try:
            return self.squeue()
        except subprocess.CalledProcessError:
            return []

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
