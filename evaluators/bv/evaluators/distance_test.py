import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from scipy import special  # noqa: E402

from bv.core import registry  # noqa: E402
from bv.core.data import build_from_arrays  # noqa: E402
from bv.evaluators import DistanceEvaluator, EvaluatorConfigError, build_evaluators  # noqa: E402

N, C = 10, 6
PP = "decode(channels=1)|keep('image')"

# Image i is all pixels i; the predict functions read example i's logits from a table row i.
_rng = np.random.default_rng(0)
TEACHER = (2.0 * _rng.standard_normal((N, C))).astype(np.float32)
STUDENT = (TEACHER + 1.5 * _rng.standard_normal((N, C))).astype(np.float32)
PARAMS = {"s": jnp.asarray(STUDENT), "t": jnp.asarray(TEACHER), "small": jnp.asarray(TEACHER[:, :5])}


def _row(images: jax.Array) -> jax.Array:
    return images[:, 0, 0, 0].astype(jnp.int32)


def _student(params: dict, images: jax.Array) -> tuple[jax.Array, dict]:
    return params["s"][_row(images)], {}


def _teacher(params: dict, images: jax.Array) -> jax.Array:
    return params["t"][_row(images)]


def _small_teacher(params: dict, images: jax.Array) -> jax.Array:
    return params["small"][_row(images)]


FNS = {"predict": _student, "teacher": _teacher, "teacher_small": _small_teacher}


def _expected(student: np.ndarray, teacher: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """The metrics in float64 with scipy, independently of the evaluator."""
    s, t = student.astype(np.float64) / temperature, teacher.astype(np.float64) / temperature
    p = special.softmax(t, axis=-1)
    kl = special.rel_entr(p, special.softmax(s, axis=-1)).sum(-1)
    xent = -(p * special.log_softmax(s, axis=-1)).sum(-1)
    ref_top = teacher.argmax(-1)
    out = {"kl": kl.mean(), "xent": xent.mean(), "agree@1": np.mean(student.argmax(-1) == ref_top)}
    rank = (student > student[np.arange(len(student)), ref_top][:, None]).sum(-1)  # classes above ref's top
    for k in (2, 5):
        out[f"agree@{k}"] = np.mean(rank < k)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tfds")
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None, None], (N, 2, 2, 1)).copy()
    build_from_arrays("ten_rows", {"test": {"image": images}}, str(folder))
    return folder


def _mesh(devices: int) -> Mesh:
    return Mesh(np.asarray(jax.devices()[:devices]), ("data",))


def _evaluator(
    data_dir: Path, fns: dict = FNS, devices: int = 1, batch_size: int = 4, **kw: object
) -> DistanceEvaluator:
    return DistanceEvaluator(
        fns,
        data={"name": "ten_rows", "split": "test"},
        pp_fn=PP,
        batch_size=batch_size,
        mesh=_mesh(devices),
        data_dir=str(data_dir),
        **kw,  # type: ignore[arg-type]
    )


def test_the_reference_numbers_are_not_trivial() -> None:
    expected = _expected(STUDENT, TEACHER)
    assert 0 < expected["agree@1"] < expected["agree@2"] < 1
    assert expected["kl"] > 0.1


def test_a_student_identical_to_its_reference_has_kl_zero_and_agrees(data_dir: Path) -> None:
    metrics = _evaluator(data_dir, {"predict": _teacher, "teacher": _teacher}).run(PARAMS)
    assert set(metrics) == {"kl", "xent", "agree@1", "agree@5"}
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["agree@1"] == 1.0 and metrics["agree@5"] == 1.0
    entropy = special.entr(special.softmax(TEACHER.astype(np.float64), axis=-1)).sum(-1).mean()
    assert metrics["xent"] == pytest.approx(entropy, abs=1e-5)


@pytest.mark.parametrize(("devices", "batch_size"), [(1, 1), (1, 3), (1, 10), (4, 4), (4, 8)])
def test_a_known_pair_gives_the_hand_computed_numbers_on_any_mesh_and_batch(
    data_dir: Path, devices: int, batch_size: int
) -> None:
    metrics = _evaluator(data_dir, devices=devices, batch_size=batch_size, ks=(1, 2, 5, 6, 10)).run(PARAMS)
    expected = _expected(STUDENT, TEACHER)
    # k=6 and k=10 are not smaller than the 6 classes: left out.
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_temperature_softens_both_distributions(data_dir: Path) -> None:
    at_1 = _evaluator(data_dir).run(PARAMS)
    at_2 = _evaluator(data_dir, temperature=2.0).run(PARAMS)
    expected = _expected(STUDENT, TEACHER, temperature=2.0)
    assert at_2["kl"] == pytest.approx(expected["kl"], abs=1e-5)
    assert at_2["xent"] == pytest.approx(expected["xent"], abs=1e-5)
    assert at_2["kl"] < at_1["kl"]
    # T=2 on the logits is T=1 on half the logits; the agreements do not depend on T.
    halved = {k: v / 2 for k, v in PARAMS.items()}
    assert at_2["kl"] == pytest.approx(_evaluator(data_dir).run(halved)["kl"], abs=1e-6)
    assert at_2["agree@1"] == at_1["agree@1"] and at_2["agree@5"] == at_1["agree@5"]


def test_it_is_registered_and_built_from_a_config(data_dir: Path) -> None:
    assert registry.evaluators.get("distance") is DistanceEvaluator
    evals = {"to_teacher": {"type": "distance", "data": {"name": "ten_rows", "split": "test"}, "pp_fn": PP}}
    (built,) = build_evaluators(evals, FNS, _mesh(1), batch_size=5, data_dir=str(data_dir), workdir=None)
    assert built.evaluator.run(PARAMS)["agree@1"] == pytest.approx(_expected(STUDENT, TEACHER)["agree@1"])


def test_logits_over_different_classes_are_an_error_naming_both(data_dir: Path) -> None:
    evaluator = _evaluator(data_dir, reference="teacher_small")
    with pytest.raises(EvaluatorConfigError, match=r"'predict'.*\(4, 6\).*'teacher_small'.*\(4, 5\)"):
        evaluator.run(PARAMS)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pred": "student"}, "pred='student' is not a predict function.*predict, teacher, teacher_small"),
        ({"reference": "teacher_big"}, "reference='teacher_big' is not a predict function"),
        ({"temperature": 0.0}, "temperature must be a positive number"),
        ({"ks": (0, 5)}, "ks must be positive integers"),
    ],
)
def test_config_mistakes_are_errors(data_dir: Path, kw: dict, message: str) -> None:
    with pytest.raises(EvaluatorConfigError, match=message):
        _evaluator(data_dir, **kw)
