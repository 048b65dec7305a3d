"""``dstream providers build|push``: turn this checkout's providers into OCI images.

Builds run without network inside the image: wheels are downloaded on the host (for
the base image's Python version and architecture), copied into a staging context with
the Dockerfile from ``images/``, and installed with ``pip --no-index``. The base image is
a build argument: ``python:3.12-slim`` by default, or a local Debian base
(``images/base/build-local-base.sh``) on machines that cannot reach Docker Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import __version__, log
from dstream.errors import RuntimeFailure
from dstream.runtime.docker import DockerEngine
from dstream.tooling import catalogue, sourcebuilds

if TYPE_CHECKING:
    from collections.abc import Callable

_log = log.get("images")
DEFAULT_BASE = "python:3.12-slim"
BASE_REPOSITORY = "dstream/provider-base"
# The SDK's own dependencies: what every provider image needs besides its own.
SDK_REQUIREMENTS = ["pydantic>=2.6,<3", "orjson>=3.9"]


def checkout_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "images").is_dir() or not (root / "providers").is_dir():
        raise RuntimeFailure("`dstream providers build` works from a dstream source checkout (images/ and providers/)")
    return root


def base_image() -> str:
    return os.environ.get("DSTREAM_BASE_IMAGE") or DEFAULT_BASE


def base_tag() -> str:
    return f"{BASE_REPOSITORY}:{__version__}"


class Builder:
    def __init__(self, engine: DockerEngine | None = None, echo: Callable[[str], None] | None = None) -> None:
        self.engine = engine or DockerEngine()
        self.root = checkout_root()
        self.echo = echo or (lambda line: _log.info("%s", line))
        self._python: tuple[str, str] | None = None
        self.rebuild_base = False
        self._base_built = False

    # -- wheels --------------------------------------------------------------------------

    def _image_python(self) -> tuple[str, str]:
        """(python version "3.11", machine "x86_64") of the base image."""
        if self._python is None:
            base = base_image()
            if self.engine.image(base) is None:
                raise RuntimeFailure(
                    f"the base image {base} is not in the local engine. Pull it (`docker pull {base}`), "
                    f"or, without access to Docker Hub, build a Debian base with "
                    f"images/base/build-local-base.sh and set DSTREAM_BASE_IMAGE=dstream-local/python:bookworm"
                )
            probe = "import sys, platform; print('%d.%d' % sys.version_info[:2], platform.machine())"
            out = self.engine.run_probe(base, ["python3", "-c", probe])
            version, machine = out.split()[-2:]
            self._python = (version, machine)
        return self._python

    def _download(self, requirements: list[str], dest: Path) -> None:
        version, machine = self._image_python()
        abi = "cp" + version.replace(".", "")
        platforms = [f"manylinux_2_{n}_{machine}" for n in (28, 17, 12, 5)] + [
            f"manylinux2014_{machine}",
            f"linux_{machine}",
        ]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--only-binary=:all:"]
        cmd += ["--python-version", version, "--implementation", "cp", "--abi", abi]
        for name in platforms:
            cmd += ["--platform", name]
        self._pip(cmd + requirements, f"downloading wheels for Python {version} on {machine}")

    def _local_wheel(self, project: Path, dest: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        self._pip([*cmd, "--wheel-dir", str(dest), str(project)], f"building the wheel of {project.name}")

    def _pip(self, cmd: list[str], what: str) -> None:
        self.echo(what)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-8:])
            raise RuntimeFailure(f"{what} failed:\n{tail}")

    def _stage(self, name: str, dockerfile: Path) -> Path:
        stage = self.root / "build" / "images" / name
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "wheels").mkdir(parents=True)
        shutil.copy(dockerfile, stage / "Dockerfile")
        return stage

    def _build(self, stage: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str]) -> None:
        self.echo(f"building {tag}")
        for line in self.engine.build(stage, tag, buildargs, labels):
            if line.startswith("Step ") and " : LABEL " not in line:
                self.echo("  " + (line if len(line) <= 110 else line[:107] + "..."))
            else:
                _log.debug("%s", line)

    # -- images --------------------------------------------------------------------------

    def build_base(self) -> str:
        stage = self._stage("provider-base", self.root / "images" / "base" / "Dockerfile")
        self._download(SDK_REQUIREMENTS, stage / "wheels")
        self._local_wheel(self.root, stage / "wheels")
        tag = base_tag()
        labels = {
            "org.opencontainers.image.title": "dstream provider base",
            "org.opencontainers.image.version": __version__,
            "io.dstream.base-image": base_image(),
        }
        self._build(stage, tag, {"BASE_IMAGE": base_image()}, labels)
        return tag

    def build(self, name: str, registry: str | None = None) -> str:
        entry = catalogue.find(name)
        dockerfile = self.root / "images" / name / "Dockerfile"
        if not dockerfile.exists():
            raise RuntimeFailure(f"no Dockerfile for {name} (expected {dockerfile})")
        if self._base_built is False and (self.rebuild_base or self.engine.image(base_tag()) is None):
            self.build_base()
            self._base_built = True
        source = self.root / entry.source
        stage = self._stage(name, dockerfile)
        requirements = _requirements(source / "pyproject.toml")
        swapped: list[str] = []
        if requirements:
            self._download(requirements, stage / "wheels")
            # Dependencies whose PyPI wheels are built slow (jq: libjq without -O2), built here.
            swapped = sourcebuilds.replace_wheels(
                source / "pyproject.toml", stage / "wheels", self._image_python(), self.root, self.echo
            )
        self._local_wheel(source, stage / "wheels")
        tag = entry.image(registry)
        labels = {
            "org.opencontainers.image.title": entry.name,
            "org.opencontainers.image.version": entry.version,
            "org.opencontainers.image.description": entry.description,
            "io.dstream.provider": entry.name,
            "io.dstream.kind": entry.kind,
            "io.dstream.verbs": ",".join(entry.verbs),
            "io.dstream.spec": json.dumps(entry.config_schema, separators=(",", ":")),
        }
        try:
            self._build(stage, tag, {"PROVIDER_BASE": base_tag()}, labels)
        except RuntimeFailure as exc:
            if not swapped:
                raise
            # E.g. a wheel built against a newer C library than the image's fails its import check.
            _log.warning(
                "%s did not build with %s built from source (%s); building it with PyPI's wheels, which are slower",
                name,
                ", ".join(swapped),
                exc,
            )
            sourcebuilds.restore(stage / "wheels", swapped)
            self._build(stage, tag, {"PROVIDER_BASE": base_tag()}, labels)
        return tag

    def build_orchestrator(self, registry: str | None = None) -> str:
        """The dstream image itself (images/dstream): the CLI, its dependencies, the built-in providers."""
        stage = self._stage("dstream", self.root / "images" / "dstream" / "Dockerfile")
        project = tomllib.loads((self.root / "pyproject.toml").read_text())["project"]
        requirements = [*project["dependencies"], *project["optional-dependencies"]["azure"]]
        self._download(requirements, stage / "wheels")
        self._local_wheel(self.root, stage / "wheels")
        for source in sorted({entry.source for entry in catalogue.entries()}):
            if not _requirements(self.root / source / "pyproject.toml"):
                self._local_wheel(self.root / source, stage / "wheels")
        tag = orchestrator_image(registry)
        labels = {"org.opencontainers.image.title": "dstream", "org.opencontainers.image.version": __version__}
        self._build(stage, tag, {"BASE_IMAGE": base_image()}, labels)
        return tag

    def push_orchestrator(self, registry: str | None = None, build: bool = False) -> str:
        image = orchestrator_image(registry)
        if build or self.engine.image(image) is None:
            self.build_orchestrator(registry)
        return self._push(image)

    def push(self, name: str, registry: str | None = None, build: bool = False) -> str:
        image = catalogue.find(name).image(registry)
        if build or self.engine.image(image) is None:
            self.build(name, registry)
        return self._push(image)

    def _push(self, image: str) -> str:
        """Push a built image; ``image@digest`` when the registry reports the digest."""
        repository, _, tag = image.rpartition(":")
        self.echo(f"pushing {image}")
        digest = self.engine.push(repository, tag, lambda event: None)
        return f"{image}@{digest}" if digest else image


def orchestrator_image(registry: str | None = None) -> str:
    return f"{registry or catalogue.default_registry()}/dstream/dstream:{__version__}"


def _requirements(pyproject: Path) -> list[str]:
    """A provider's dependencies, without dstream itself (the base image has it). Parsed with
    ``packaging.requirements``: ``dstream`` in any spelling (``DStream[sdk] >= 0.1``, markers)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads(pyproject.read_text()).get("project", {})
    deps = [str(d) for d in project.get("dependencies", [])]
    try:
        return [d for d in deps if canonicalize_name(Requirement(d).name) != "dstream"]
    except InvalidRequirement as exc:
        raise RuntimeFailure(f"{pyproject}: a dependency is not a valid requirement: {exc}") from None
