"""Wheels built from source with flags (dstream/tooling/sourcebuilds.py): the jq provider's
image and the venv get libjq built with -O2 instead of PyPI's unoptimised wheel, and every
case where that cannot happen says so in a warning instead of shipping the slow one silently."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstream.tooling import sourcebuilds

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPI = "jq-1.13.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl"
BUILT = "jq-1.13.0-cp311-cp311-linux_x86_64.whl"


def _provider(tmp_path: Path) -> Path:
    pyproject = tmp_path / "provider" / "pyproject.toml"
    pyproject.parent.mkdir()
    pyproject.write_text('[project]\nname = "p"\n\n[tool.dstream.build-from-source]\njq = { CPPFLAGS = "-O2" }\n')
    return pyproject


def _stage(tmp_path: Path) -> Path:
    wheels = tmp_path / "stage" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / PYPI).write_bytes(b"pypi")
    (wheels / "orjson-3.10.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"other")
    return wheels


def _cached(root: Path) -> Path:
    folder = root / sourcebuilds.CACHE / sourcebuilds.key("jq", "1.13.0", {"CPPFLAGS": "-O2"})
    folder.mkdir(parents=True)
    (folder / BUILT).write_bytes(b"built with -O2")
    return folder / BUILT


def test_the_jq_provider_builds_libjq_with_optimisation() -> None:
    assert sourcebuilds.declared(ROOT / "providers" / "jq" / "pyproject.toml") == {"jq": {"CPPFLAGS": "-O2"}}


def test_the_cache_key_names_version_python_machine_and_flags() -> None:
    python, machine = sourcebuilds.this_python()
    key = sourcebuilds.key("jq", "1.13.0", {"CPPFLAGS": "-O2"})
    assert key == f"jq-1.13.0-cp{python.replace('.', '')}-{machine}-CPPFLAGS=-O2"
    assert sourcebuilds.key("jq", "1.13.0", {"CPPFLAGS": "-O3"}) != key
    assert sourcebuilds.key("jq", "1.12.0", {"CPPFLAGS": "-O2"}) != key


def test_the_image_gets_the_built_wheel_and_restore_puts_pypis_back(tmp_path: Path) -> None:
    wheels, root = _stage(tmp_path), tmp_path / "root"
    _cached(root)
    swapped = sourcebuilds.replace_wheels(_provider(tmp_path), wheels, sourcebuilds.this_python(), root, print)
    assert swapped == ["jq"]
    assert (wheels / BUILT).read_bytes() == b"built with -O2"
    assert not (wheels / PYPI).exists()
    sourcebuilds.restore(wheels, swapped)
    assert (wheels / PYPI).read_bytes() == b"pypi"
    assert not (wheels / BUILT).exists()
    assert len(list(wheels.glob("*.whl"))) == 2


def test_another_python_in_the_image_keeps_pypis_wheel_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wheels, root = _stage(tmp_path), tmp_path / "root"
    _cached(root)
    with caplog.at_level(logging.WARNING, logger="dstream"):
        swapped = sourcebuilds.replace_wheels(_provider(tmp_path), wheels, ("3.99", "x86_64"), root, print)
    assert swapped == []
    assert (wheels / PYPI).exists()
    assert "PyPI's wheel of jq 1.13.0" in caplog.text
    assert "3.99" in caplog.text


def test_a_failed_build_warns_and_keeps_pypis_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict[str, Any]] = []

    def no_compiler(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append({"cmd": cmd, "env": kwargs["env"]})
        return subprocess.CompletedProcess(cmd, 1, "", "error: command 'gcc' failed: No such file or directory")

    monkeypatch.setattr(sourcebuilds.subprocess, "run", no_compiler)
    wheels = _stage(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dstream"):
        swapped = sourcebuilds.replace_wheels(
            _provider(tmp_path), wheels, sourcebuilds.this_python(), tmp_path / "root", print
        )
    assert swapped == []
    assert (wheels / PYPI).exists()
    assert "could not build jq 1.13.0" in caplog.text
    assert "gcc" in caplog.text
    # The build asked for the sdist of the very version PyPI resolved, with the flags, uncached.
    assert calls[0]["env"]["CPPFLAGS"] == "-O2"
    assert "jq==1.13.0" in calls[0]["cmd"]
    assert "--no-binary" in calls[0]["cmd"]
    assert "--no-cache-dir" in calls[0]["cmd"]


def test_a_cached_wheel_is_not_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    built = _cached(root)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(sourcebuilds.subprocess, "run", refuse)
    assert sourcebuilds.wheel(root, "jq", "1.13.0", {"CPPFLAGS": "-O2"}, print) == built


class _Engine:
    """The engine calls the image builder makes; the first build fails like a Dockerfile
    whose `import jq` check fails (a wheel built against a newer C library than the image's)."""

    def __init__(self) -> None:
        self.builds: list[list[str]] = []

    def image(self, name: str) -> dict[str, Any]:
        return {"Id": name}

    def build(self, context: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str]) -> Any:
        from dstream.errors import RuntimeFailure

        self.builds.append(sorted(p.name for p in (context / "wheels").glob("*.whl")))
        if len(self.builds) == 1:
            raise RuntimeFailure(f"building {tag} failed: ImportError: GLIBC_2.38 not found")
        return iter(["Step 1/1 : FROM base"])


def test_an_image_that_does_not_load_the_built_wheel_is_built_again_with_pypis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dstream.tooling import images

    built = tmp_path / BUILT
    built.write_bytes(b"built with -O2")
    engine = _Engine()
    builder = images.Builder(engine=engine, echo=lambda line: None)  # type: ignore[arg-type]
    monkeypatch.setattr(builder, "_image_python", sourcebuilds.this_python)
    monkeypatch.setattr(builder, "_download", lambda requirements, dest: (dest / PYPI).write_bytes(b"pypi"))
    monkeypatch.setattr(builder, "_local_wheel", lambda project, dest: None)
    monkeypatch.setattr(sourcebuilds, "wheel", lambda *args: built)
    for folder in ("images", "providers"):  # the checkout's, with the staging folder under tmp_path
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.setattr(builder, "root", tmp_path)
    with caplog.at_level(logging.WARNING, logger="dstream"):
        builder.build("jq-transform-provider", "127.0.0.1:5000/test")
    assert engine.builds == [[BUILT], [PYPI]]
    assert "jq-transform-provider did not build with jq built from source" in caplog.text
    assert "GLIBC_2.38" in caplog.text
