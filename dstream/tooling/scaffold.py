"""``dstream providers new NAME --kind input|transform|output``: a project that works as generated.

It writes a self-contained project directory:

    NAME/
      pyproject.toml        the package, with a console script named NAME
      <package>/__init__.py the provider class (a working example to edit)
      <package>/__main__.py ``python -m <package>``
      tests/test_provider.py tests with dstream.sdk.testing (no Docker needed)
      Dockerfile            builds on the dstream provider base, offline
      provider.json         its catalogue entry (name, kind, verbs, config schema)
      README.md             test, build, push, use in a task
"""

from __future__ import annotations

import json
import re
from importlib import resources
from string import Template
from typing import TYPE_CHECKING

from dstream import __version__
from dstream.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

#: The project's files: real files under templates/, filled in with string.Template
#: (``$name``, so Python's and JSON's braces need no escaping; ``$$`` is a dollar).
TEMPLATES = resources.files("dstream.tooling") / "templates"


def render(relative: str, **values: str) -> str:
    """``templates/<relative>.tmpl`` with ``values`` put in (a missing value is an error)."""
    return Template((TEMPLATES / f"{relative}.tmpl").read_text(encoding="utf-8")).substitute(values)


def dockerfile_label(value: str) -> str:
    """``value`` as a double-quoted Dockerfile LABEL value, whatever characters it holds:
    the builder reads backslash escapes and expands ``$`` variables inside double quotes."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _package(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_")


def scaffold(name: str, kind: str, directory: Path) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9-]*-(input|transform|output)-provider", name):
        raise ConfigError(
            f"{name!r}: a provider name is lowercase and ends in -input-provider, -transform-provider "
            "or -output-provider"
        )
    if not name.endswith(f"-{kind}-provider"):
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConfigError(f"{name!r} is {article} {kind} provider: its name must end in -{kind}-provider")
    root = directory / name
    if root.exists():
        raise ConfigError(f"{root} already exists")
    package = _package(name)
    source = render(f"{kind}/provider.py", name=name)
    namespace: dict[str, object] = {}
    exec(compile(source, f"{package}/__init__.py", "exec"), namespace)  # noqa: S102 - our own template
    schema = namespace["Provider"].Config.model_json_schema()  # type: ignore[attr-defined]
    spec = json.dumps(schema, separators=(",", ":"))
    values = {"name": name, "kind": kind, "package": package, "version": __version__}
    files = {
        "pyproject.toml": render("pyproject.toml", **values),
        f"{package}/__init__.py": source,
        f"{package}/__main__.py": f"from {package} import main\n\nmain()\n",
        "tests/test_provider.py": render(f"{kind}/test_provider.py", package=package),
        "Dockerfile": render("Dockerfile", **values, spec_label=dockerfile_label(spec)),
        "provider.json": json.dumps(
            {
                "name": name,
                "kind": kind,
                "version": "0.1.0",
                "repository": name,
                "description": f"A dstream {kind} provider",
                "verbs": ["run"],
                "config_schema": schema,
            },
            indent=2,
        )
        + "\n",
        "README.md": render("README.md", name=name, kind=kind, blocks=_example_blocks(name, kind)),
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _example_blocks(name: str, kind: str) -> str:
    """The README's example task: this provider in its place, shipped ones around it."""
    ref = f'provider_ref = "127.0.0.1:5000/{name}:0.1.0"'
    blocks = {
        "input": 'input { provider_path = "counter-input-provider" }',
        "transform": "",
        "output": 'output { provider_path = "console-output-provider" }',
    }
    blocks[kind] = f"{kind} {{ {ref} }}"
    return "\n".join(f"      {block}" for block in blocks.values() if block)
