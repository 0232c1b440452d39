"""bv-train's persistent compilation cache: where it goes, and when bv leaves JAX's setting alone."""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from bv.core import compile_cache


@pytest.fixture(autouse=True)
def _restore_jax_setting():
    before = getattr(jax.config, "jax_compilation_cache_dir")
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_cache_goes_to_the_folder_given_or_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    assert compile_cache.enable() == str(tmp_path / "xdg" / "bv" / "jax")
    assert getattr(jax.config, "jax_compilation_cache_dir") == str(tmp_path / "xdg" / "bv" / "jax")
    assert (tmp_path / "xdg" / "bv" / "jax").is_dir()

    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.enable() == str(tmp_path / "mine")


def test_an_empty_setting_turns_it_off_and_jaxs_own_setting_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(compile_cache.ENV_VAR, "")
    assert compile_cache.enable() is None and getattr(jax.config, "jax_compilation_cache_dir") is None

    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    assert compile_cache.enable() is None
    assert getattr(jax.config, "jax_compilation_cache_dir") == str(tmp_path / "users")


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
    program = (
        "import jax, jax.numpy as jnp\n"
        "from bv.core import compile_cache\n"
        "compile_cache.enable()\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())\n"
        "print(float(f(jnp.ones((8, 8)))))\n"
    )
    env = {"BV_COMPILATION_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = ":".join(sys.path)
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    entries = [p.name for p in (tmp_path / "cache").iterdir()]
    assert any(name.startswith("jit_") for name in entries), entries
