"""Give every local GPU job its own devices: `python -m kdmcse gpus --count K -- COMMAND …`.

Snakemake counts a `gpu` resource but assigns no device ids, and a CUDA program left alone uses device 0: N
concurrent jobs on an N-GPU machine would all land on GPU 0. The rules therefore start every GPU stage through
this wrapper. It picks K free devices, exports them as CUDA_VISIBLE_DEVICES and then *replaces itself* with
COMMAND (exec), so the stage, or torchrun and its K workers, start inside the allocation and see devices 0..K-1.

Where the devices come from, first match wins:
1. `KDMCSE_GPU_COUNT=N`: the machine is taken to have GPUs 0..N-1 (no probing; 0 hides every GPU). Tests use it
   to exercise the allocation on machines without GPUs.
2. A scheduler: inside a SLURM job (SLURM_JOB_ID set) the scheduler already chose the devices and set
   CUDA_VISIBLE_DEVICES; the wrapper changes nothing and only checks that at least K were granted.
3. CUDA_VISIBLE_DEVICES set by the user: allocate among the devices it lists.
4. `nvidia-smi -L`: every GPU of the machine. No GPU: the command runs unchanged (on CPU).

Why locks and not bookkeeping: each device has a lock file (`<lock dir>/gpu-<id>.lock`, lock dir
`KDMCSE_GPU_LOCK_DIR`, default /tmp/kdmcse-gpus, shared by every workflow on the machine). A device is taken by
holding an exclusive flock(2) on its file; the descriptor is inherited across the exec, so the stage itself holds
the lock, and the kernel releases it when the job ends, however it ends: a killed job (SIGKILL, OOM, a cancelled
Snakemake run) leaves nothing stale behind, unlike pid files. A job takes all K devices or none (no hold-and-wait,
so two multi-GPU jobs cannot deadlock) and otherwise waits, polling, until enough are free.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from kdmcse.errors import KdmcseError

log = logging.getLogger(__name__)

COUNT_VAR = "KDMCSE_GPU_COUNT"
LOCK_DIR_VAR = "KDMCSE_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = "/tmp/kdmcse-gpus"
SCHEDULER_VARS = ("SLURM_JOB_ID",)  # set in every SLURM job and job step


@dataclass(frozen=True)
class DevicePool:
    """The devices a job may be given, and who decides."""

    devices: tuple[str, ...]
    source: str  # "count" | "scheduler" | "visible" | "nvidia-smi" | "none"

    @property
    def scheduled(self) -> bool:
        return self.source == "scheduler"


def _split_visible(value: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in value.split(",") if d.strip())


def probe_gpus() -> tuple[str, ...]:
    """Indices of the machine's GPUs from `nvidia-smi -L` (empty without the tool or a driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(str(i) for i, _ in enumerate(re.findall(r"^GPU \d+:", out, re.M)))


def device_pool(env: Mapping[str, str] | None = None) -> DevicePool:
    """The devices available to this job (see the module docstring for the order)."""
    env = os.environ if env is None else env
    if env.get(COUNT_VAR, "").strip():
        raw = env[COUNT_VAR].strip()
        if not raw.isdigit():
            raise KdmcseError(f"{COUNT_VAR}={raw!r}: expected a number of GPUs such as 2 (0 = none)")
        return DevicePool(tuple(str(i) for i in range(int(raw))), "count")
    if any(env.get(v) for v in SCHEDULER_VARS):
        return DevicePool(_split_visible(env.get("CUDA_VISIBLE_DEVICES", "")), "scheduler")
    if "CUDA_VISIBLE_DEVICES" in env:
        return DevicePool(_split_visible(env["CUDA_VISIBLE_DEVICES"]), "visible")
    found = probe_gpus()
    return DevicePool(found, "nvidia-smi" if found else "none")


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(LOCK_DIR_VAR) or DEFAULT_LOCK_DIR)


def _lock_path(folder: Path, device: str) -> Path:
    return folder / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _open_lock(path: Path) -> int:
    """Open (creating) a device's lock file; read-only where another user created it (flock needs no write)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o666)  # other users' jobs must be able to open it too, whatever our umask
    except OSError:
        pass
    return fd


def _try_lock(path: Path) -> int | None:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _note_holder(fd: int, command: list[str]) -> None:
    """Write who holds the device into its lock file (for people looking at a busy machine; not used for locking)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(command)[:500]}\n".encode(), 0)
    except OSError:
        pass  # opened read-only: another user's file


def make_lock_dir(folder: Path) -> None:
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o1777)  # shared by every user's jobs, like /tmp itself
    except OSError as exc:
        if not folder.is_dir():
            raise KdmcseError(f"cannot create the GPU lock folder {folder}: {exc}; set {LOCK_DIR_VAR} to a "
                              "writable folder on this machine") from exc


def acquire(devices: tuple[str, ...], count: int, folder: Path, *, timeout: float | None = None,
            poll: float = 1.0) -> tuple[list[str], list[int]]:
    """Lock `count` of `devices` (all or none, waiting while fewer are free); return them and their descriptors."""
    make_lock_dir(folder)
    start, announced = time.monotonic(), False
    while True:
        taken: list[tuple[str, int]] = []
        for device in devices:
            fd = _try_lock(_lock_path(folder, device))
            if fd is not None:
                taken.append((device, fd))
                if len(taken) == count:
                    return [d for d, _ in taken], [fd for _, fd in taken]
        for _, fd in taken:  # too few free: give them back so a waiting job can complete its set
            os.close(fd)
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise KdmcseError(f"no {count} free GPU(s) among {', '.join(devices)} after {waited:.0f} s "
                              f"(lock files in {folder})")
        if not announced:
            log.info("waiting for %d free GPU(s) among %s (%d free now)", count, ",".join(devices), len(taken))
            announced = True
        time.sleep(poll * (0.5 + random.random()))  # jitter: waiting jobs do not retry in lockstep


def _check_granted(pool: DevicePool, count: int) -> None:
    if not pool.devices:
        log.warning("the scheduler granted no GPU (CUDA_VISIBLE_DEVICES is unset); running on CPU")
    elif len(pool.devices) < count:
        raise KdmcseError(f"this job needs {count} GPUs but the scheduler granted {len(pool.devices)} "
                          f"(CUDA_VISIBLE_DEVICES={','.join(pool.devices)}); ask for {count} (rule resource `gpu`, "
                          "which train.gpus_per_job sets for training) and do not override it in the profile")


def allocation_env(count: int, command: list[str], env: Mapping[str, str] | None = None, *,
                   timeout: float | None = None) -> tuple[dict[str, str], list[int]]:
    """The environment to run `command` in, and the lock descriptors it must inherit."""
    env = dict(os.environ if env is None else env)
    pool = device_pool(env)
    if pool.scheduled:
        _check_granted(pool, count)
        log.info("devices chosen by the scheduler: CUDA_VISIBLE_DEVICES=%s", ",".join(pool.devices) or "(unset)")
        return env, []
    if count == 0:
        return env, []
    if not pool.devices:
        if pool.source == "count":  # KDMCSE_GPU_COUNT=0: hide any GPU the machine has
            env["CUDA_VISIBLE_DEVICES"] = ""
        log.info("no GPU on this machine (%s); running on CPU", pool.source)
        return env, []
    if count > len(pool.devices):
        raise KdmcseError(f"this job needs {count} GPUs but this machine has {len(pool.devices)} "
                          f"({pool.source}: {','.join(pool.devices)}); lower train.gpus_per_job")
    folder = lock_dir(env)
    devices, fds = acquire(pool.devices, count, folder, timeout=timeout)
    for fd in fds:
        _note_holder(fd, command)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # indices as nvidia-smi numbers them
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    log.info("CUDA_VISIBLE_DEVICES=%s (%d of %d GPUs from %s; locks in %s)", env["CUDA_VISIBLE_DEVICES"], count,
             len(pool.devices), pool.source, folder)
    return env, fds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdmcse gpus",
        description="Run COMMAND on COUNT GPUs of its own (CUDA_VISIBLE_DEVICES), waiting until they are free.")
    parser.add_argument("--count", type=int, default=1, help="GPUs the command needs (default 1)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up after this many seconds without enough free GPUs (default: wait)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS…]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.count < 0:
        raise KdmcseError(f"--count {args.count}: the number of GPUs cannot be negative")
    env, fds = allocation_env(args.count, command, timeout=args.timeout)
    for fd in fds:
        os.set_inheritable(fd, True)  # the command holds the locks from here on
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        raise KdmcseError(f"cannot run {command[0]!r}: {exc.strerror}") from exc
    return 0  # not reached
