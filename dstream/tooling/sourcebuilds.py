"""Wheels built from their sdist with chosen compiler flags, for dependencies whose PyPI
wheels are built slower than they could be.

PyPI's ``jq`` wheels build their bundled libjq without optimisation (jq.py's ``setup.py``
runs libjq's ``configure`` with ``CFLAGS=-fPIC -pthread``, which drops autoconf's default
``-O2``): libjq runs about 2.5x slower than the jq CLI. A provider names such packages in
its ``pyproject.toml``::

    [tool.dstream.build-from-source]
    jq = { CPPFLAGS = "-O2" }   # environment of the build; CPPFLAGS reaches every compile line

``dstream providers build`` ships that wheel in the image instead of PyPI's, and ``make venv``
installs it into the development venv (``python -m dstream.tooling.sourcebuilds install``).
Each wheel is built once per package, version, Python, machine and flags, with this Python,
and kept under ``build/source-wheels/``. When one cannot be built or used (no C compiler, an
image with another Python than this one), a warning says so and PyPI's wheel is used.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import log

if TYPE_CHECKING:
    from collections.abc import Callable

_log = log.get("images")
CACHE = Path("build") / "source-wheels"
PYPI_ASIDE = "pypi-wheels"  # beside a staging folder's wheels/: what replace_wheels() swapped out


def declared(pyproject: Path) -> dict[str, dict[str, str]]:
    """``[tool.dstream.build-from-source]`` of a provider: package → build environment."""
    table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("dstream", {}).get("build-from-source", {})
    return {str(name): {str(k): str(v) for k, v in env.items()} for name, env in table.items()}


def this_python() -> tuple[str, str]:
    """(version "3.11", machine "x86_64") of the Python that builds the wheels."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine()


def key(package: str, version: str, env: dict[str, str]) -> str:
    """The cache folder's name: what the wheel depends on."""
    python, machine = this_python()
    flags = "_".join(f"{k}={v}" for k, v in sorted(env.items()))
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{package}-{version}-cp{python.replace('.', '')}-{machine}-{flags}")


def wheel(root: Path, package: str, version: str, env: dict[str, str], echo: Callable[[str], None]) -> Path | None:
    """The wheel of ``package==version`` built with ``env`` (built now if not cached), or None
    (with a warning) when it cannot be built."""
    folder = root / CACHE / key(package, version, env)
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[0]
    echo(f"building {package} {version} from its sdist with {_shown(env)} (once; about a minute)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        # --no-cache-dir: pip caches wheels built from an sdist by the sdist's hash, not by flags.
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir", "--no-deps"]
        cmd += ["--no-binary", package, "--wheel-dir", tmp, f"{package}=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False)
        built = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not built:
            tail = " | ".join(result.stderr.strip().splitlines()[-4:])
            _log.warning(
                "could not build %s %s from source with %s (a C compiler and make are needed): %s; "
                "using PyPI's wheel, which is slower",
                package,
                version,
                _shown(env),
                tail or "no wheel",
            )
            return None
        folder.mkdir()
        return Path(shutil.move(str(built[0]), folder / built[0].name))


def replace_wheels(
    pyproject: Path, wheels: Path, image_python: tuple[str, str], root: Path, echo: Callable[[str], None]
) -> list[str]:
    """In a staging folder of downloaded wheels, swap each package the provider builds from
    source for the wheel built with its flags. Returns the packages swapped."""
    swapped = []
    for package, env in declared(pyproject).items():
        downloaded = _find(wheels, package)
        if downloaded is None:
            continue
        version = downloaded.name.split("-")[1]
        if image_python != this_python():
            _log.warning(
                "%s: the image's Python %s on %s is not this one (%s on %s), so it gets PyPI's wheel of %s %s "
                "(built without %s: slower); build images with the same Python as the base image for the fast one",
                pyproject.parent.name,
                *image_python,
                *this_python(),
                package,
                version,
                _shown(env),
            )
            continue
        built = wheel(root, package, version, env, echo)
        if built is None:
            continue
        aside = wheels.parent / PYPI_ASIDE
        aside.mkdir(exist_ok=True)
        shutil.move(str(downloaded), aside / downloaded.name)  # kept for restore()
        shutil.copy(built, wheels / built.name)
        swapped.append(package)
    return swapped


def restore(wheels: Path, packages: list[str]) -> None:
    """Undo :func:`replace_wheels`: PyPI's wheels back in place of the ones built here."""
    aside = wheels.parent / PYPI_ASIDE
    for package in packages:
        built, original = _find(wheels, package), _find(aside, package)
        if built is not None and original is not None:
            built.unlink()
            shutil.move(str(original), wheels / original.name)


def install(root: Path, echo: Callable[[str], None]) -> int:
    """Install into this Python's environment the source builds every provider declares, for
    the versions installed now. Returns how many could not be (each with a warning)."""
    failed = 0
    for pyproject in sorted(root.glob("providers/*/pyproject.toml")):
        for package, env in declared(pyproject).items():
            try:
                dist = importlib.metadata.distribution(package)
            except importlib.metadata.PackageNotFoundError:
                continue
            built = wheel(root, package, dist.version, env, echo)
            if built is None:
                _log.warning("once it can be built: python -m dstream.tooling.sourcebuilds install")
                failed += 1
                continue
            if _installed_from(dist) == built.resolve().as_uri():
                continue
            echo(f"installing {built.name} (built with {_shown(env)})")
            cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(built)]
            if subprocess.run(cmd, check=False).returncode != 0:
                _log.warning("could not install %s; %s stays PyPI's wheel, which is slower", built, package)
                failed += 1
    return failed


def _installed_from(dist: importlib.metadata.Distribution) -> str:
    text = dist.read_text("direct_url.json")
    return str(json.loads(text).get("url", "")) if text else ""


def _find(wheels: Path, package: str) -> Path | None:
    wanted = re.sub(r"[-_.]+", "_", package).lower()
    for path in wheels.glob("*.whl"):
        if path.name.split("-")[0].lower() == wanted:
            return path
    return None


def _shown(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        sys.stderr.write("usage: python -m dstream.tooling.sourcebuilds install\n")
        return 2
    root = Path(__file__).resolve().parents[2]

    def echo(line: str) -> None:
        sys.stderr.write(f"[sourcebuilds] {line}\n")

    install(root, echo)
    return 0  # what could not be built was a warning, not a failure: PyPI's wheels work, only slower


if __name__ == "__main__":
    sys.exit(main())
