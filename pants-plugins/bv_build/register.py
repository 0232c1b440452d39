"""Pants plugin: each bv distribution reads its version from its package's version.py.

So a package's version lives in one place, visible both to the wheel metadata
and at run time (``bv.vit.__version__``). A distribution's BUILD target names the
file with ``version_file=`` and its README with ``readme=`` in ``python_artifact``.

Its ``extras_require`` may name third-party requirements by name alone (``"tensorflow-cpu"``):
the plugin writes each with its range from 3rdparty/python/requirements.txt, so the ranges
live in one place. Names of bv distributions (``"bv-core[train]"``) are kept as they are;
their version range comes with the base requirement.
"""

from __future__ import annotations

import ast
import re

from pants.backend.python.util_rules.package_dists import SetupKwargs, SetupKwargsRequest
from pants.engine.fs import DigestContents, GlobMatchErrorBehavior, PathGlobs
from pants.engine.rules import Get, collect_rules, rule
from pants.engine.target import Target
from pants.engine.unions import UnionRule


class BvSetupKwargsRequest(SetupKwargsRequest):
    @classmethod
    def is_applicable(cls, target: Target) -> bool:
        return True


def parse_version(source: str, path: str) -> str:
    """The string assigned to ``__version__`` in a version.py file."""
    for node in ast.parse(source, filename=path).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise ValueError(f'{path} must assign a string to __version__, e.g. __version__ = "0.1.0".')


REQUIREMENTS_FILE = "3rdparty/python/requirements.txt"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(source: str) -> dict[str, str]:
    """``{normalized project name: requirement line without its comment}`` of a requirements file."""
    found = {}
    for line in source.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            found[_normalize(match.group(0))] = line
    return found


def resolve_extras(extras: dict, requirements: dict[str, str], address) -> dict[str, list[str]]:
    """Each extra's names, written with their ranges from the requirements file."""
    resolved = {}
    for extra, names in extras.items():
        reqs = []
        for name in names:
            project = _normalize(re.split(r"[\[<>=!~;\s]", name, maxsplit=1)[0])
            if project.startswith("bv-"):
                reqs.append(name)
            elif project in requirements:
                reqs.append(requirements[project])
            else:
                raise ValueError(
                    f"{address}: extra {extra!r} names {name!r}, which is not in {REQUIREMENTS_FILE}; add it there."
                )
        resolved[extra] = reqs
    return resolved


@rule
async def bv_setup_kwargs(request: BvSetupKwargsRequest) -> SetupKwargs:
    kwargs = dict(request.explicit_kwargs)
    address = request.target.address
    version_file = kwargs.pop("version_file", None)
    readme_file = kwargs.pop("readme", None)
    if not version_file:
        raise ValueError(f"{address}: python_artifact needs version_file='<package>/version.py'.")
    extras = kwargs.get("extras_require")
    paths = [version_file] + ([readme_file] if readme_file else []) + ([REQUIREMENTS_FILE] if extras else [])
    contents = await Get(
        DigestContents,
        PathGlobs(
            paths,
            glob_match_error_behavior=GlobMatchErrorBehavior.error,
            description_of_origin=f"the python_artifact of {address}",
        ),
    )
    by_path = {c.path: c.content.decode() for c in contents}
    kwargs["version"] = parse_version(by_path[version_file], version_file)
    if readme_file:
        kwargs["long_description"] = by_path[readme_file]
        kwargs["long_description_content_type"] = "text/markdown"
    if extras:
        kwargs["extras_require"] = resolve_extras(extras, parse_requirements(by_path[REQUIREMENTS_FILE]), address)
    kwargs.setdefault("license", "Apache-2.0")
    kwargs.setdefault("python_requires", ">=3.11")
    return SetupKwargs(kwargs, address=address)


def rules():
    return [*collect_rules(), UnionRule(SetupKwargsRequest, BvSetupKwargsRequest)]
