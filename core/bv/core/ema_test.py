import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bv.core import ema


def test_the_average_follows_the_params_until_start_step_then_decays() -> None:
    cfg = ema.EmaConfig(decay=0.9, start_step=2)
    average = {"w": jnp.zeros(3)}
    values = [1.0, 2.0, 3.0, 4.0]
    for step, value in enumerate(values, start=1):
        average = ema.update(average, {"w": jnp.full(3, value)}, jnp.int32(step), cfg)
    # Steps 1 and 2 copy the params (2.0); step 3: 0.9*2 + 0.1*3 = 2.1; step 4: 0.9*2.1 + 0.1*4 = 2.29.
    np.testing.assert_allclose(average["w"], np.full(3, 2.29), rtol=1e-6)


def test_the_average_keeps_the_layout_of_the_params() -> None:
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    layout = NamedSharding(mesh, PartitionSpec("data"))
    params = {"w": jax.device_put(jnp.arange(4.0), layout)}
    out = jax.jit(lambda e, p: ema.update(e, p, jnp.int32(5), ema.EmaConfig(0.5)))(params, params)
    assert out["w"].sharding.is_equivalent_to(layout, 1)
    assert out["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(decay=1.0), r"decay must be a number in \(0, 1\)"),
        (dict(decay=-0.1), r"decay must be a number in \(0, 1\)"),
        (dict(decay="0.9"), r"decay must be a number in \(0, 1\)"),
        (dict(start_step=3), "needs a 'decay'"),
        (dict(decay=0.9, start_step=-1), "start_step must be a whole number >= 0"),
        (dict(decay=0.9, warmup=3), "unknown keys"),
    ],
)
def test_bad_ema_configs_are_clear_errors(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ema.parse(cfg)


def test_no_ema_config_means_no_average() -> None:
    assert ema.parse(None) is None and ema.parse({}) is None
    assert ema.parse({"decay": 0.99}) == ema.EmaConfig(0.99, 0)
