"""What a benchmark run ran on: the machine, the versions, and how busy other processes kept the CPU."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import resource
import subprocess
import time
from typing import Any, Mapping

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-cpu",
    "tensorflow",
    "tensorflow-datasets",
    "torch",
    "timm",
    "numpy",
    "jax-cuda13-plugin",
    "jax-cuda12-plugin",
)
BV_PACKAGES = {
    "bv-core": "bv.core.version",
    "bv-vit": "bv.vit.version",
    "bv-mixer": "bv.mixer.version",
    "bv-bit": "bv.bit.version",
}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bv_versions() -> dict[str, str]:
    import importlib

    out = {}
    for dist, module in BV_PACKAGES.items():
        try:
            out[dist] = importlib.import_module(module).__version__
        except (ImportError, AttributeError):
            continue
    return out


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        return out + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def describe() -> dict[str, Any]:
    """The machine and the software, without importing jax or torch (the suite's own process stays light)."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "gpus": _nvidia_smi(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {name: v for name in PACKAGES if (v := _version(name))},
        "bv": _bv_versions(),
        "commit": _git_commit(),
    }


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclasses.dataclass
class LoadMeter:
    """How much CPU other processes used while the suite ran: the one number that says the machine was shared.

    Measured as all CPUs' busy time (``/proc/stat``) minus this process's and its finished
    children's CPU time, as a share of the machine's cores, with the load averages at both ends.
    """

    start_wall: float = dataclasses.field(default_factory=time.monotonic)
    start_jiffies: tuple[int, int] | None = dataclasses.field(default_factory=_cpu_jiffies)
    start_own: float = dataclasses.field(default_factory=_own_cpu_seconds)
    start_load: tuple[float, float, float] = dataclasses.field(default_factory=os.getloadavg)

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.start_wall
        cores = len(os.sched_getaffinity(0))
        out: dict[str, Any] = {
            "wall_s": wall,
            "load_start": list(self.start_load),
            "load_end": list(os.getloadavg()),
            "cores": cores,
        }
        now = _cpu_jiffies()
        if now and self.start_jiffies and wall > 0:
            tick = os.sysconf("SC_CLK_TCK")
            busy_s = (now[0] - self.start_jiffies[0]) / tick
            total_cpus = os.cpu_count() or cores
            own_s = _own_cpu_seconds() - self.start_own
            out["others_cores"] = max(0.0, busy_s - own_s) / wall
            out["own_cores"] = own_s / wall
            out["machine_cores"] = total_cpus
        return out


def shared(load: Mapping[str, Any]) -> bool:
    """Whether other processes used a noticeable share (over a tenth of a core) of the CPU during the run."""
    return bool(load.get("others_cores", 0.0) > 0.1 or max(load["load_start"][0], load["load_end"][0]) > load["cores"])
