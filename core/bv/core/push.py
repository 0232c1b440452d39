"""``bv push SOURCE ORG/NAME``: upload a model to the Hugging Face Hub.

    bv push out/vit_mnist org/vit-mnist           # a model folder (bv export's, or save_pretrained's)
    bv push runs/vit_mnist org/vit-mnist --ema    # a training workdir: exported first, then uploaded

A folder is uploaded as it is, model card included, after it has loaded (its
weights' checksums are checked), so a damaged folder never reaches the Hub. A
workdir goes through ``bv export`` (see :mod:`bv.core.export`) into a temporary
folder. The token is huggingface_hub's (``HF_TOKEN`` or ``hf auth login``); bv never
logs it. Works in the lean install.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from bv.core import cli
from bv.core.errors import UserError

__all__ = ["PushError", "main", "push"]


class PushError(UserError, ValueError):
    """A source that cannot be pushed, or a Hub that refused the upload; the message says which."""


def is_workdir(path: str) -> bool:
    """Whether ``path`` is a training workdir (as opposed to a model folder)."""
    return os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isfile(os.path.join(path, "metrics.jsonl"))


def push(
    source: str,
    repo: str,
    *,
    private: bool | None = None,
    branch: str | None = None,
    license: str | None = None,
    ema: bool = False,
    commit_message: str | None = None,
) -> str:
    """Uploads ``source`` (a model folder or a training workdir) to ``repo``; returns the commit's URL."""
    if not os.path.isdir(source):
        raise PushError(f"{source!r} is not a folder; expected a model folder (bv export's OUT) or a training workdir.")
    if is_workdir(source):
        from bv.core import export

        with tempfile.TemporaryDirectory(prefix="bv-push-") as tmp:
            out = os.path.join(tmp, "model")
            export.export(source, out, license=license, ema=ema)
            return _upload(out, repo, private=private, branch=branch, commit_message=commit_message)
    if ema or license:
        raise PushError("--ema and --license apply to a training workdir; a model folder is uploaded as it is.")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise PushError(
            f"{source} has no config.json: expected a model folder (written by bv export or save_pretrained) "
            "or a training workdir (with checkpoints/)."
        )
    from bv.core.hub.model import load_model

    load_model(source)  # the weights load and match their checksums: never upload a damaged folder
    return _upload(source, repo, private=private, branch=branch, commit_message=commit_message)


def _upload(folder: str, repo: str, *, private: bool | None, branch: str | None, commit_message: str | None) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=folder,
            revision=branch,
            commit_message=commit_message or "Upload model with bv push",
        )
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PushError(
            f"The Hub refused the upload to {repo!r}: {first}. Check the repo name (org/name) and that your "
            "token may write there (HF_TOKEN, or `hf auth login`)."
        ) from None
    return str(getattr(info, "commit_url", info))


def main(argv: Sequence[str] | None = None, *, prog: str = "bv push") -> None:
    """Console entry point of ``bv push``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Upload a model folder, or a training workdir's model, to the Hugging Face Hub."
    )
    parser.add_argument("source", help="a model folder (from bv export or save_pretrained) or a training workdir")
    parser.add_argument("repo", help="the Hub repo to upload to, e.g. org/name (created if needed)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    parser.add_argument("--branch", help="the branch to commit to (default: main)")
    parser.add_argument("--message", help="the commit message")
    parser.add_argument("--license", help="a workdir only: the license of the model card, e.g. apache-2.0")
    parser.add_argument("--ema", action="store_true", help="a workdir only: push the EMA of the params")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    with cli.user_errors(prog):
        url = push(
            args.source,
            args.repo,
            private=args.private,
            branch=args.branch,
            license=args.license,
            ema=args.ema,
            commit_message=args.message,
        )
    print(f"Uploaded to {url}")
