"""The wheels install into a fresh virtual environment with pip, as users will get them.

Pants builds the eight wheels (runtime_package_dependencies in tests/BUILD) and
places them in this test's sandbox. pip resolves their third-party
requirements from the package index (its cache makes reruns quick).
"""

from __future__ import annotations

import email.parser
import glob
import os
import re
import subprocess
import venv
import zipfile
from pathlib import Path

DISTRIBUTIONS = ["bv-core", "bv-vit", "bv-mixer", "bv-bit", "bv-lit", "bv-uvim", "bv-distill", "bv-sam"]
BUILT_ON_VIT = {"bv-lit", "bv-uvim", "bv-distill"}


def _wheels() -> dict[str, Path]:
    found = {}
    for path in glob.glob("**/*.whl", recursive=True):
        dist = Path(path).name.split("-")[0].replace("_", "-")
        found[dist] = Path(path).resolve()
    missing = set(DISTRIBUTIONS) - set(found)
    assert not missing, f"wheels not built: {sorted(missing)}; found {sorted(found)}"
    return found


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _requirement(meta: email.message.Message, dist: str) -> str | None:
    for req in meta.get_all("Requires-Dist") or []:
        if re.match(rf"{re.escape(dist)}\b", req.replace("_", "-")):
            return req
    return None


def _is_range(requirement: str) -> bool:
    """`~=` or a lower and an upper bound; never `==`."""
    spec = requirement.split(";")[0]
    return "==" not in spec and ("~=" in spec or (">=" in spec and "<" in spec))


def test_each_wheel_pins_its_bv_dependencies_with_a_range() -> None:
    for dist, wheel in _wheels().items():
        meta = _metadata(wheel)
        assert meta["Name"].replace("_", "-") == dist
        assert re.fullmatch(r"\d+\.\d+\.\d+", meta["Version"]), meta["Version"]
        if dist == "bv-core":
            assert _requirement(meta, "jax") and _requirement(meta, "tensorflow-datasets"), meta.get_all(
                "Requires-Dist"
            )
            continue
        core = _requirement(meta, "bv-core")
        assert core and _is_range(core), f"{dist} requires {core!r}; expected a compatible range of bv-core"
        if dist in BUILT_ON_VIT:
            vit = _requirement(meta, "bv-vit")
            assert vit and _is_range(vit), f"{dist} requires {vit!r}; expected a compatible range of bv-vit"


def test_wheels_install_into_a_fresh_venv_and_import(tmp_path: Path) -> None:
    wheels = _wheels()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Run pip and the interpreter as a user would: without the test runner's paths.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEX", "PYTHON"))}
    # Pants gives its own subprocesses an empty pip configuration; pip here should see the machine's.
    if env.get("PIP_CONFIG_FILE") == os.devnull:
        del env["PIP_CONFIG_FILE"]
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + [str(wheels[d]) for d in DISTRIBUTIONS], check=True, env=env, timeout=1700)

    script = """
import importlib.metadata as md
import bv.core, bv.pp, bv.vit, bv.mixer, bv.bit, bv.lit, bv.uvim, bv.distill, bv.sam
from bv.core import registry
from bv.vit import ViT
assert "vit" in registry.models, registry.models.names()
assert "decode" in registry.pp_ops
print(md.version("bv-core"), md.version("bv-vit"), bv.vit.__version__)
"""
    out = subprocess.run([str(python), "-c", script], check=True, env=env, capture_output=True, text=True, cwd=tmp_path)
    core_version, vit_version, vit_module_version = out.stdout.split()
    assert vit_version == vit_module_version
    assert re.fullmatch(r"\d+\.\d+\.\d+", core_version)

    # The console script is installed and answers --help.
    help_out = subprocess.run(
        [str(env_dir / "bin" / "bv-train"), "--help"], check=True, env=env, capture_output=True, text=True
    )
    assert "--config" in help_out.stdout + help_out.stderr
    # Nothing of the source tree leaked in: the packages come from site-packages.
    where = subprocess.run(
        [str(python), "-c", "import bv.vit; print(bv.vit.__file__)"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "site-packages" in where.stdout

    # bv-lit's README example (zero-shot on a few digits, a save/load round trip) runs on the installed wheels.
    readme = (Path(__file__).parent.parent / "projects" / "lit" / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    lit = subprocess.run([str(python), "-c", example], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert lit.returncode == 0, lit.stderr[-3000:]
    assert "(8, 10)" in lit.stdout
