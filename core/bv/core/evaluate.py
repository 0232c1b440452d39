"""``bv-eval``: run a config's evaluators on a trained or published model, without training.

    bv-eval --config bv.vit.configs.mnist --model runs/vit_mnist            # a bv workdir (its latest checkpoint)
    bv-eval --config bv.vit.configs.mnist --model runs/vit_mnist --ema      # ... its EMA of the params
    bv-eval --config bv.vit.configs.mnist --model out/vit_mnist --out evals  # a Hub folder; writes evals/
    bv-eval --config my_transfer.py --model org/name                          # a Hub repo id
    bv-eval --config my_transfer.py --model ckpt.npz                          # a big_vision .npz, or a timm folder

The config says which task builds the model and which evaluators run
(``config.evals``); ``--config.KEY=VALUE`` overrides work as in ``bv-train``.
The model is laid out on the config's mesh with its sharding strategy, exactly
as the trainer lays it out, so the metrics equal the trainer's own evals. They
are printed, and with ``--out DIR`` written to ``DIR/eval_metrics.json``.
Nothing is written anywhere else: a workdir being evaluated is only read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Sequence

import jax
import ml_collections

from bv.core import checkpoint, cli, distributed, sharding
from bv.core.model_init import bv_checkpoint_path, load_pretrained
from bv.core.tasks import Task, get_task
from bv.core.data import sources
from bv.core.errors import UserError
from bv.core.files import write_text
from bv.core.train_data import TrainData

log = logging.getLogger("bv.eval")

RESULTS_FILE = "eval_metrics.json"


class EvalSourceError(UserError, ValueError):
    """A ``--model`` that cannot be evaluated; the message says why and what is accepted."""


def _param_shapes(config: ml_collections.ConfigDict, task: Task) -> Any:
    """The task's parameter shapes, from one batch of the config's training input (for the image size)."""
    spec = TrainData(config).batch_spec()
    return jax.eval_shape(task.init, jax.random.PRNGKey(0), spec)


def load_model_params(
    config: ml_collections.ConfigDict, task: Task, source: str, *, ema: bool = False, revision: str | None = None
) -> Any:
    """The params in ``source`` (anything ``config.model_init`` accepts) as host arrays shaped like the task's."""
    shapes = _param_shapes(config, task)
    ckpt = bv_checkpoint_path(source) if os.path.isdir(source) else None
    if ema:
        if ckpt is None:
            raise EvalSourceError(f"--ema needs a bv workdir or checkpoint with config.ema; {source!r} is neither.")
        if "ema" not in checkpoint.top_level_entries(ckpt):
            raise EvalSourceError(f"{ckpt} holds no EMA of the params (the run did not set config.ema). Drop --ema.")
        from bv.core.hub.fit import fit_params
        from bv.core.tree import flatten_with_names

        loaded = dict(flatten_with_names(checkpoint.load_params(ckpt, subtree="ema")))
        return fit_params(loaded, shapes, what=f"The EMA in {ckpt}")
    return load_pretrained(source, shapes, config=config, revision=revision)


def evaluate(
    config: ml_collections.ConfigDict,
    source: str,
    *,
    ema: bool = False,
    revision: str | None = None,
    out: str | None = None,
) -> dict[str, float]:
    """The metrics of every evaluator in ``config.evals`` on the model in ``source``.

    ``out`` is where evaluators that write files (``save_predictions``) write them.
    """
    from bv.evaluators import EvaluatorConfigError, build_evaluators

    if not config.get("evals"):
        raise EvaluatorConfigError("The config has no evals (config.evals is empty): nothing to evaluate.")
    mesh = sharding.make_mesh(config.get("mesh"))
    task = get_task(config)
    params = load_model_params(config, task, source, ema=ema, revision=revision)
    layout = sharding.param_shardings(
        {"params": params},
        mesh,
        config.get("sharding_strategy", sharding.DEFAULT_STRATEGY),
        logical_axes=task.logical_axes(params),
        rules=config.get("sharding_rules"),
    )["params"]
    params = checkpoint.put_global(params, layout)
    data_dir = sources.parse_sources(config.input)[0].data.get("data_dir")  # the evals' default, as in training
    evaluators = build_evaluators(
        config.evals,
        task.predict_fns(),
        mesh,
        batch_size=int(config.input.batch_size),
        data_dir=data_dir,
        workdir=out,
        frozen=task.frozen(),
    )
    results: dict[str, float] = {}
    with sharding.activation_rules(config.get("sharding_rules"), mesh):
        for e in evaluators:
            results.update({f"{e.name}/{k}": v for k, v in e.evaluator.run(params).items()})
    return results


def write_results(results: dict[str, float], out: str, source: str) -> str:
    """``out/eval_metrics.json`` (atomically): the source and its metrics."""
    return write_text(
        os.path.join(out, RESULTS_FILE), json.dumps({"model": source, "metrics": results}, indent=2) + "\n"
    )


def _split_own_flags(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Takes ``--model``, ``--out``, ``--revision`` and ``--ema`` out of ``argv``; the rest is bv-train's syntax."""
    own: dict[str, Any] = {"model": None, "out": None, "revision": None, "ema": False}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        flag, has_value, value = argv[i].partition("=")
        i += 1
        if flag == "--ema":
            own["ema"] = True
        elif flag in ("--model", "--out", "--revision"):
            if not has_value:
                if i >= len(argv) or argv[i].startswith("--"):
                    raise cli.UsageError(f"{flag} needs a value: {flag}=VALUE or {flag} VALUE.")
                value, i = argv[i], i + 1
            own[flag[2:]] = value
        elif flag == "--workdir":
            raise cli.UsageError(
                "bv-eval takes no --workdir: name the model with --model and where to write with --out."
            )
        else:
            rest.append(argv[i - 1])
    return own, rest


def usage(prog: str = "bv-eval") -> str:
    """The help text of ``bv eval`` (alias ``bv-eval``)."""
    return USAGE.replace("bv-eval", prog, 1)


USAGE = (
    "usage: bv-eval --config FILE.py[:ARGS] --model SOURCE [--out DIR] [--ema] [--revision REV] [--config.KEY=VALUE ...]\n"
    "\n"
    "  --model SOURCE   a bv workdir or checkpoint, a Hub repo id or model folder (bv or timm), a big_vision .npz\n"
    "  --out DIR        also write the metrics to DIR/eval_metrics.json (and save_predictions' files)\n"
    "  --ema            evaluate the workdir's EMA of the params (runs trained with config.ema)\n"
    "  --revision REV   the Hub revision (branch, tag or commit) of a repo id\n"
)


def main(argv: Sequence[str] | None = None, *, prog: str = "bv-eval") -> None:
    """Console entry point (``bv eval``, alias ``bv-eval``): runs a config's evaluators on a model."""
    # force: absl (imported with orbax) may already have put its handler on the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout, force=True
    )
    distributed.initialize_from_env()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage(prog))
        raise SystemExit(0)
    try:
        own, rest = _split_own_flags(argv)
        if not own["model"]:
            raise cli.UsageError("--model SOURCE is required: the model to evaluate.")
    except cli.UsageError as e:
        print(f"{prog}: error: {e}\n\n{usage(prog)}", file=sys.stderr)
        raise SystemExit(cli.EXIT_USER_ERROR) from None
    with cli.user_errors(prog):
        args = cli.parse_train_args(rest, prog=prog)
        results = evaluate(args.config, own["model"], ema=own["ema"], revision=own["revision"], out=own["out"])
    if jax.process_index() == 0:
        for name, value in results.items():
            print(f"{name}: {value!r}", flush=True)  # in full: equal to the trainer's logged value
        if own["out"]:
            print(f"Wrote {write_results(results, own['out'], own['model'])}")


if __name__ == "__main__":
    main()
