"""Multi-process start-up: ``jax.distributed.initialize`` when the environment says there are several processes.

Call :func:`initialize_from_env` first thing in a program, before anything
touches a jax device. It reads, in this order:

* ``BV_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``BV_NUM_PROCESSES``,
  ``BV_PROCESS_ID`` and optionally ``BV_LOCAL_DEVICE_IDS`` (``0,1``): an
  explicit launch, e.g. one process per GPU started by hand or by a script;
* ``BV_JAX_INIT`` set to a true value (as big_vision's TPU launcher sets it):
  let jax detect the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes);
* SLURM with more than one task (``SLURM_JOB_ID``, ``SLURM_NTASKS`` > 1), started by ``srun``;
* a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES``
  listing several hosts, or ``MEGASCALE_COORDINATOR_ADDRESS`` for multislice).

Anything else is a single process, and nothing is done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax

log = logging.getLogger(__name__)

_BV_VARS = ("BV_COORDINATOR_ADDRESS", "BV_NUM_PROCESSES", "BV_PROCESS_ID")
# What jax's own SLURM detection (jax/_src/clusters/slurm_cluster.py) reads; srun sets them all.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_TRUE = ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """How to call ``jax.distributed.initialize``: ``source`` says why, ``kwargs`` what to pass."""

    source: str
    kwargs: dict[str, Any]


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer.") from None


def _explicit_plan(env: Mapping[str, str]) -> InitPlan | None:
    given = [v for v in (*_BV_VARS, "BV_LOCAL_DEVICE_IDS") if env.get(v)]
    if not given:
        return None
    missing = [v for v in _BV_VARS if not env.get(v)]
    if missing:
        raise ValueError(
            f"Incomplete multi-process settings: {', '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not. Set all of {', '.join(_BV_VARS)} "
            "(and optionally BV_LOCAL_DEVICE_IDS), or none of them for a single process."
        )
    address = env["BV_COORDINATOR_ADDRESS"]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"BV_COORDINATOR_ADDRESS={address!r} must be host:port, e.g. 10.0.0.1:1234.")
    num_processes = _int(env, "BV_NUM_PROCESSES")
    process_id = _int(env, "BV_PROCESS_ID")
    if num_processes < 1:
        raise ValueError(f"BV_NUM_PROCESSES={num_processes} must be at least 1.")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"BV_PROCESS_ID={process_id} must be in [0, {num_processes}) for BV_NUM_PROCESSES={num_processes}."
        )
    kwargs: dict[str, Any] = {
        "coordinator_address": address,
        "num_processes": num_processes,
        "process_id": process_id,
        # Explicit settings win: do not let jax's cluster detection (SLURM, MPI) fill in the rest.
        "cluster_detection_method": "deactivate",
    }
    if env.get("BV_LOCAL_DEVICE_IDS"):
        try:
            kwargs["local_device_ids"] = [int(i) for i in env["BV_LOCAL_DEVICE_IDS"].split(",")]
        except ValueError:
            raise ValueError(
                f"BV_LOCAL_DEVICE_IDS={env['BV_LOCAL_DEVICE_IDS']!r} must be comma-separated integers, e.g. 0,1."
            ) from None
    if num_processes == 1:
        return None
    return InitPlan("BV_* variables", kwargs)


def plan_from_env(env: Mapping[str, str] | None = None) -> InitPlan | None:
    """What :func:`initialize_from_env` would do, without doing it (None: a single process)."""
    env = os.environ if env is None else env
    plan = _explicit_plan(env)
    if plan is not None or any(env.get(v) for v in _BV_VARS):
        return plan
    if env.get("BV_JAX_INIT", "").strip().lower() in _TRUE:
        return InitPlan("BV_JAX_INIT (jax's cluster detection)", {})
    if "SLURM_JOB_ID" in env:
        tasks = _int(env, "SLURM_NTASKS") if env.get("SLURM_NTASKS") else 1
        if tasks > 1:
            missing = [v for v in _SLURM_VARS if v not in env]
            if missing:
                raise ValueError(
                    f"This SLURM job has SLURM_NTASKS={tasks} but {', '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not set, so jax cannot find the other processes. "
                    "Start each task with srun, or set BV_COORDINATOR_ADDRESS, BV_NUM_PROCESSES and BV_PROCESS_ID."
                )
            return InitPlan(f"SLURM ({tasks} tasks)", {})
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return InitPlan("a multi-host TPU slice", {})
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return InitPlan("a multislice TPU job", {})
    return None


def initialize_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Initialises ``jax.distributed`` if ``env`` (default ``os.environ``) describes several processes.

    Returns whether it initialised; a single process, or a second call, does
    nothing. Must run before jax uses a device. Partial settings are errors.
    """
    plan = plan_from_env(env)
    if plan is None:
        return False
    if jax.distributed.is_initialized():
        log.info("jax.distributed is already initialised; not initialising again.")
        return False
    log.info("Initialising jax.distributed from %s.", plan.source)
    jax.distributed.initialize(**plan.kwargs)
    return True


def describe() -> str:
    """One line for the log: this process and the devices it sees."""
    local = jax.local_devices()
    kinds = sorted({d.device_kind for d in local})
    return (
        f"process {jax.process_index()} of {jax.process_count()}, {len(local)} local of "
        f"{jax.device_count()} devices ({jax.default_backend()}: {', '.join(kinds)})"
    )
