import os

# 8 simulated CPU devices, before jax starts its backend (the same flags as the other bv.core sharding tests).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from bv.core import distributed  # noqa: E402
from bv.core import sharding  # noqa: E402,F401  (the child processes import it; this makes it a dependency)

BV = {"BV_COORDINATOR_ADDRESS": "10.0.0.1:1234", "BV_NUM_PROCESSES": "4", "BV_PROCESS_ID": "2"}
SLURM = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


@pytest.fixture(autouse=True, scope="module")
def eight_devices():
    assert jax.device_count() == 8, "XLA_FLAGS must give 8 CPU devices before jax starts"


def test_nothing_set_is_a_single_process():
    assert distributed.plan_from_env({}) is None
    assert distributed.plan_from_env({"PATH": "/bin", "SLURM_JOB_ID": "5", "SLURM_NTASKS": "1"}) is None
    assert distributed.plan_from_env({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # a single-host TPU
    assert distributed.plan_from_env({**BV, "BV_NUM_PROCESSES": "1", "BV_PROCESS_ID": "0"}) is None
    assert distributed.initialize_from_env({}) is False
    assert not jax.distributed.is_initialized()


def test_bv_variables():
    plan = distributed.plan_from_env(BV)
    assert plan is not None
    assert plan.kwargs == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 2,
        "cluster_detection_method": "deactivate",
    }
    plan = distributed.plan_from_env({**BV, **SLURM, "BV_LOCAL_DEVICE_IDS": "0,1"})  # explicit settings win
    assert plan is not None and plan.source == "BV_* variables"
    assert plan.kwargs["local_device_ids"] == [0, 1]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"BV_PROCESS_ID": "1"}, r"BV_PROCESS_ID is set but BV_COORDINATOR_ADDRESS, BV_NUM_PROCESSES are not"),
        ({"BV_LOCAL_DEVICE_IDS": "0"}, r"BV_LOCAL_DEVICE_IDS is set but .*BV_PROCESS_ID are not"),
        ({**BV, "BV_NUM_PROCESSES": ""}, r"but BV_NUM_PROCESSES is not"),
        ({**BV, "BV_NUM_PROCESSES": "four"}, r"BV_NUM_PROCESSES='four' must be an integer"),
        ({**BV, "BV_PROCESS_ID": "4"}, r"BV_PROCESS_ID=4 must be in \[0, 4\)"),
        ({**BV, "BV_NUM_PROCESSES": "0"}, r"BV_NUM_PROCESSES=0 must be at least 1"),
        ({**BV, "BV_COORDINATOR_ADDRESS": "10.0.0.1"}, r"must be host:port"),
        ({**BV, "BV_LOCAL_DEVICE_IDS": "0;1"}, r"comma-separated integers"),
        ({"SLURM_JOB_ID": "5", "SLURM_NTASKS": "4"}, r"SLURM_NTASKS=4 but SLURM_STEP_NODELIST, .* not set.*srun"),
    ],
)
def test_partial_settings_are_errors(env, message):
    with pytest.raises(ValueError, match=message):
        distributed.plan_from_env(env)
    with pytest.raises(ValueError, match=message):
        distributed.initialize_from_env(env)


def test_clusters_that_jax_detects():
    plan = distributed.plan_from_env(SLURM)
    assert plan is not None and plan.source == "SLURM (2 tasks)" and plan.kwargs == {}
    plan = distributed.plan_from_env({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1", "TPU_WORKER_ID": "1"})
    assert plan is not None and plan.kwargs == {}
    assert distributed.plan_from_env({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}) is not None
    assert distributed.plan_from_env({"BV_JAX_INIT": "1"}) is not None
    assert distributed.plan_from_env({"BV_JAX_INIT": "0"}) is None


def test_describe():
    assert distributed.describe().startswith("process 0 of 1, 8 local of 8 devices (cpu:")


CHILD = textwrap.dedent(
    """
    import jax
    import numpy as np

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from bv.core import distributed, sharding

    assert distributed.initialize_from_env()
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = sharding.make_mesh([("data", -1)])
    pid = jax.process_index()
    local = np.arange(4 * pid, 4 * pid + 4, dtype=np.float32)  # rows of this process's 2 devices
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    print(f"RESULT {pid} {x.shape[0]} {float(total)} | {distributed.describe()}", flush=True)
    jax.distributed.shutdown()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_sum_a_global_array():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BV_", "SLURM_")) and "proxy" not in k.lower()}
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        BV_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        BV_NUM_PROCESSES="2",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env={**env, "BV_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=60)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("The two jax processes did not finish within 60 s (a hang in jax.distributed?).")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out}"
    results = [next(line for line in out.splitlines() if line.startswith("RESULT")) for out in outputs]
    print("\n".join(results))
    assert results[0].startswith("RESULT 0 8 28.0 | process 0 of 2, 2 local of 4 devices (cpu:")
    assert results[1].startswith("RESULT 1 8 28.0 | process 1 of 2, 2 local of 4 devices (cpu:")
