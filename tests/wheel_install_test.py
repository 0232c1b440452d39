"""The wheels install into fresh virtual environments with pip, as users will get them.

Pants builds the eight wheels (runtime_package_dependencies in tests/BUILD) and
places them in this test's sandbox. pip resolves their third-party
requirements from the package index (its cache makes reruns quick). Two venvs:

* the full one: all eight wheels with their ``train`` extra (TensorFlow, TFDS, ...);
  it trains a tiny run with ``bv train``;
* the lean one: only the bv-core and bv-vit wheels, no extra, as ``pip install bv-vit``
  gives. It must hold no TensorFlow, TFDS or scikit-learn, and still create, save (model
  card included), load and run a ViT and ``bv export`` the full venv's run.

Nothing is installed by hand into either: whatever they need must be in the wheels' metadata.
"""

from __future__ import annotations

import ast
import email.parser
import glob
import os
import re
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

DISTRIBUTIONS = ["bv-core", "bv-vit", "bv-mixer", "bv-bit", "bv-lit", "bv-uvim", "bv-distill", "bv-sam"]
BUILT_ON_VIT = {"bv-lit", "bv-uvim", "bv-distill"}
LEAN = ["bv-core", "bv-vit"]
# What only training needs: in the train extra, never in a wheel's base requirements.
TRAIN_ONLY = ["tensorflow-cpu", "tensorflow-datasets", "scikit-learn", "mlxtend", "tensorboardx", "matplotlib"]
# Import names that differ from their distribution's name.
DIST_OF_MODULE = {
    "tensorflow": "tensorflow-cpu",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "orbax": "orbax-checkpoint",
    "absl": "absl-py",
    "PIL": "pillow",
    "yaml": "pyyaml",
}


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


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(meta: email.message.Message) -> dict[str, set[str]]:
    """``{distribution: extras under which it is required ('' = always)}``."""
    found: dict[str, set[str]] = {}
    for req in meta.get_all("Requires-Dist") or []:
        name = _normalize(re.split(r"[\s;(<>=!~\[]", req, maxsplit=1)[0])
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", req)
        found.setdefault(name, set()).add(extra.group(1) if extra else "")
    return found


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


def test_training_requirements_are_in_the_train_extra_only() -> None:
    for dist, wheel in _wheels().items():
        requires = _requires(_metadata(wheel))
        always = {name for name, extras in requires.items() if "" in extras}
        assert not always & set(TRAIN_ONLY), f"{dist} requires {sorted(always & set(TRAIN_ONLY))} without an extra"
        train = {name for name, extras in requires.items() if "train" in extras}
        if dist == "bv-core":
            assert set(TRAIN_ONLY) <= train, f"bv-core[train] lacks {sorted(set(TRAIN_ONLY) - train)}"
            assert {"jinja2", "huggingface-hub", "safetensors", "jax", "flax"} <= always, sorted(always)
        else:
            assert "bv-core" in train, f"{dist}[train] should require bv-core[train]: {requires}"


def _imported_modules(wheel: Path) -> set[str]:
    """The top-level modules that a wheel's Python files import (anywhere in them), less stdlib and bv."""
    found: set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not name.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(zf.read(name), filename=name)):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"bv", "__future__"}


def test_every_third_party_import_is_declared_in_the_wheels() -> None:
    """A module a wheel imports is in its requirements (any extra), or in those of a bv wheel it requires."""
    wheels = _wheels()
    requires = {dist: _requires(_metadata(wheel)) for dist, wheel in wheels.items()}

    def declared(dist: str) -> set[str]:
        names = set(requires[dist])
        for dep in [d for d in requires[dist] if d.startswith("bv-")]:
            names |= declared(dep)
        return names

    for dist, wheel in wheels.items():
        undeclared = {
            module
            for module in _imported_modules(wheel)
            if _normalize(DIST_OF_MODULE.get(module, module)) not in declared(dist)
        }
        assert not undeclared, f"{dist} imports {sorted(undeclared)} but its metadata does not require them"


def _user_env() -> dict[str, str]:
    """Run pip and the interpreter as a user would: without the test runner's paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEX", "PYTHON"))}
    # Pants gives its own subprocesses an empty pip configuration; pip here should see the machine's.
    if env.get("PIP_CONFIG_FILE") == os.devnull:
        del env["PIP_CONFIG_FILE"]
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _make_venv(env_dir: Path, requirements: list[str]) -> Path:
    """A fresh venv with ``requirements`` (and what their metadata requires) installed; returns its python."""
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    start = time.monotonic()
    subprocess.run(pip + requirements, check=True, env=_user_env(), timeout=1700)
    print(f"{env_dir.name}: installed in {time.monotonic() - start:.0f} s, {_size_mb(env_dir):.0f} MB")
    return python


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.fixture(scope="module")
def full_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All eight wheels with the train extra; returns the venv's folder."""
    wheels = _wheels()
    env_dir = tmp_path_factory.mktemp("venvs") / "full"
    _make_venv(env_dir, [f"{wheels[d]}[train]" for d in DISTRIBUTIONS])
    return env_dir


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the bv-core and bv-vit wheels, without extras (`pip install bv-vit`); returns the venv's folder."""
    wheels = _wheels()
    env_dir = tmp_path_factory.mktemp("venvs") / "lean"
    _make_venv(env_dir, [str(wheels[d]) for d in LEAN])
    return env_dir


@pytest.fixture(scope="module")
def tiny_run(full_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step MNIST-5k ViT run trained by `bv train` in the full venv; returns its workdir."""
    root = tmp_path_factory.mktemp("tiny_run")
    env = {**_user_env(), "TFDS_DATA_DIR": str(root / "tfds")}
    args = [
        "train",
        "--config",
        "bv.vit.configs.mnist:runlocal",
        "--config.total_steps=2",
        "--workdir",
        str(root / "run"),
    ]
    out = subprocess.run(
        [str(full_venv / "bin" / "bv"), *args], env=env, capture_output=True, text=True, cwd=root, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert (root / "run" / "checkpoints").is_dir()
    return root / "run"


def test_the_lean_install_runs_a_vit_and_exports_a_run_without_tensorflow(
    lean_venv: Path, full_venv: Path, tiny_run: Path, tmp_path: Path
) -> None:
    python, env = lean_venv / "bin" / "python", _user_env()
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    installed = {_normalize(line.split("==")[0]) for line in listed.splitlines() if "==" in line}
    assert not installed & {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "scikit-learn", "mlxtend"}, sorted(
        installed
    )
    assert {"bv-core", "bv-vit", "jax", "flax", "huggingface-hub", "safetensors", "jinja2"} <= installed

    # What a user of `pip install bv-vit` runs: create, save (with its model card), load, predict.
    script = """
import sys, os
import numpy as np
from bv.vit import ViT
model = ViT.create(variant="Ti/16", num_classes=10, resolution=32, labels=[str(i) for i in range(10)])
model.save_pretrained("vit_folder")
assert "library_name: bv" in open(os.path.join("vit_folder", "README.md")).read()
loaded = ViT.from_pretrained("vit_folder")
images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
logits = np.asarray(loaded(images))
np.testing.assert_allclose(logits, np.asarray(model(images)), rtol=1e-5, atol=1e-5)
assert logits.shape == (2, 10), logits.shape
heavy = sorted(m for m in ("tensorflow", "tensorflow_datasets", "sklearn") if m in sys.modules)
assert not heavy, heavy
print("ok", logits.shape)
"""
    out = subprocess.run([str(python), "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok (2, 10)" in out.stdout

    # `bv export` turns the full venv's training run into a Hub folder, without TensorFlow.
    bv = str(lean_venv / "bin" / "bv")
    exported = subprocess.run(
        [bv, "export", str(tiny_run), str(tmp_path / "exported")], env=env, capture_output=True, text=True
    )
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-3000:]
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "exported").iterdir()}

    # A training-only feature names the extra that brings it: one paragraph, exit code 2.
    refused = subprocess.run(
        [bv, "train", "--config", "bv.vit.configs.mnist:runlocal"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("bv train: error: ") and 'pip install "bv-core[train]"' in refused.stderr
    assert refused.stderr.strip().count("\n") == 0, refused.stderr

    lean_mb, full_mb = _size_mb(lean_venv), _size_mb(full_venv)
    print(
        f"installed size: lean venv (bv-core, bv-vit) {lean_mb:.0f} MB; full venv (8 wheels [train]) {full_mb:.0f} MB"
    )
    assert lean_mb < 0.7 * full_mb


def test_wheels_install_into_a_fresh_venv_and_import(full_venv: Path, tmp_path: Path) -> None:
    env_dir, env = full_venv, _user_env()
    python = env_dir / "bin" / "python"

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
    # One command for everything, also as `python -m bv` (bv stays a namespace package).
    for command in ([str(env_dir / "bin" / "bv"), "--help"], [str(python), "-m", "bv", "--help"]):
        help_out = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
        assert all(f"  {name} " in help_out.stdout for name in ("train", "eval", "export", "push")), help_out.stdout
    namespace = subprocess.run(
        [str(python), "-c", "import bv; print(getattr(bv, '__file__', None), len(list(bv.__path__)))"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert namespace.stdout.split()[0] == "None", namespace.stdout  # no bv/__init__.py
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
