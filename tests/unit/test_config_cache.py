"""The HCL parse-tree cache is data, not code (security review round 3, row 5): a planted
pickle never runs, a folder others can write to is not used, and a cached tree loads
exactly what a fresh parse loads, line numbers included."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from typing import TYPE_CHECKING

import hcl2
import pytest

from dstream.config import lint, load
from dstream.paths import cache_dir
from tests.conftest import ROOT
from tests.unit.test_config import FULL

if TYPE_CHECKING:
    from pathlib import Path

TASK = """\
task "copy" {
  input {
    provider_path = "counter-input-provider"
    config { max_count = 3 }
  }
  output { provider_path = "console-output-provider" }
}
"""
# Mistakes the loader reports with their lines: a cached tree must report the same ones.
BROKEN = """\
locals {
  a = local.b
  b = local.a
}

task "t" {
  input {
    provider_path = "counter-input-provider"
    config {
      x = nosuch
      y = "${local.missing}"
      z = upper(1, 2)
      w = "{{ env \\"X\\" | weird }}"
    }
  }
  output { provider_path = 3 }
  output { provider_path = "x" }
}
"""


def _corpus() -> list[str]:
    """Every HCL text at hand: the README's examples, the repository's task file, the
    loader's own test files."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```hcl\n(.*?)```", readme, re.DOTALL)
    return [FULL, BROKEN, TASK, (ROOT / "dstream.hcl").read_text(), *blocks]


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEST_CONN", "Server=db;Password=x")
    return tmp_path / "cache"


class _Payload:
    """What the review planted: a pickle that runs a command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _plant_everywhere(folder: Path, text: str, blob: bytes) -> None:
    """``blob`` under every name an entry for ``text`` could have: the old
    ``<sha256>.pickle`` and whatever the cache folder holds now."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{hashlib.sha256(text.encode()).hexdigest()}.pickle").write_bytes(blob)
    for entry in folder.iterdir():
        entry.write_bytes(blob)


def test_a_planted_pickle_never_runs(tmp_path: Path, cache_root: Path) -> None:
    path = tmp_path / "dstream.hcl"
    path.write_text(TASK)
    load(path)  # a first run fills the cache
    marker = tmp_path / "PWNED"
    _plant_everywhere(cache_root / "hcl", TASK, pickle.dumps(_Payload(marker)))
    document = load(path)
    assert not marker.exists()
    assert document.tasks["copy"].input.provider_path == "counter-input-provider"
    assert lint(path) == []


@pytest.mark.parametrize("mode", [0o770, 0o777])
def test_a_cache_folder_others_can_write_to_is_not_used(
    tmp_path: Path, cache_root: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dstream.hcl"
    path.write_text(TASK)
    load(path)
    # Someone else rewrites the entries so that the task runs another program.
    swapped = hcl2.parses_to_tree(TASK.replace("counter-input-provider", "evil-input-provider"))
    _plant_everywhere(cache_root / "hcl", TASK, pickle.dumps(swapped))
    from dstream.config import treecache

    for entry in (cache_root / "hcl").glob("*.json"):
        entry.write_text(json.dumps(treecache.encode(swapped)))
    (cache_root / "hcl").chmod(mode)
    with caplog.at_level("WARNING", logger="dstream"):
        assert load(path).tasks["copy"].input.provider_path == "counter-input-provider"
    assert "writable by other users" in caplog.text


def test_a_cache_folder_of_another_user_is_not_used(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dstream.hcl"
    path.write_text(TASK)
    load(path)
    from dstream.config import treecache

    swapped = hcl2.parses_to_tree(TASK.replace("counter-input-provider", "evil-input-provider"))
    _plant_everywhere(cache_root / "hcl", TASK, pickle.dumps(swapped))
    for entry in (cache_root / "hcl").glob("*.json"):
        entry.write_text(json.dumps(treecache.encode(swapped)))
    real = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real + 4242)  # the folder now "belongs to someone else"
    assert load(path).tasks["copy"].input.provider_path == "counter-input-provider"


def test_the_cache_is_used_and_is_json(tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dstream.hcl"
    path.write_text(TASK)
    first = load(path)
    (entry,) = (cache_root / "hcl").iterdir()
    assert entry.suffix == ".json"
    assert entry.read_bytes().startswith(b'["T",')
    assert (cache_root / "hcl").stat().st_mode & 0o777 == 0o700
    assert cache_dir().stat().st_mode & 0o022 == 0

    def no_parsing(text: str) -> None:
        raise AssertionError("the cached tree was not used")

    monkeypatch.setattr(hcl2, "parses_to_tree", no_parsing)
    assert load(path) == first


@pytest.mark.parametrize("index", range(len(_corpus())))
def test_a_cached_tree_loads_what_a_fresh_parse_loads(tmp_path: Path, cache_root: Path, index: int) -> None:
    """Differential: the same file, parsed fresh and read back from the cache, gives the same
    tree (rules, token types and texts, lines), the same document and the same problems."""
    from dstream.config import treecache

    text = _corpus()[index]
    fresh = hcl2.parses_to_tree(text)
    assert treecache.encode(treecache.decode(treecache.encode(fresh))) == treecache.encode(fresh)
    path = tmp_path / "dstream.hcl"
    path.write_text(text)
    environ = {"TEST_CONN": "Server=db;Password=x"}
    cold_problems = lint(path, environ)
    assert list((cache_root / "hcl").glob("*.json")), "the first load stored the tree"
    assert lint(path, environ) == cold_problems
    if cold_problems:
        assert all(re.match(rf"{re.escape(str(path))}:\d+: ", p) for p in cold_problems)
        return
    warm = load(path, environ)
    shutil.rmtree(cache_root / "hcl")
    assert load(path, environ) == warm


def test_the_broken_sample_reports_its_lines_from_the_cache(tmp_path: Path, cache_root: Path) -> None:
    """The differential test above compares problems: here they are, line by line, read
    back from the cache."""
    path = tmp_path / "dstream.hcl"
    path.write_text(BROKEN)
    lint(path, {})
    assert list((cache_root / "hcl").glob("*.json"))
    lines = [int(problem.split(":")[1]) for problem in lint(path, {})]
    assert lines == [2, 3, 10, 11, 12, 13, 17, 17]


def test_broken_entries_are_a_miss(tmp_path: Path, cache_root: Path) -> None:
    path = tmp_path / "dstream.hcl"
    path.write_text(TASK)
    load(path)
    (entry,) = (cache_root / "hcl").iterdir()
    for junk in (b"", b"not json", b"[1,2,3]", b'["T","start",1,[["X"]]]', b"[" * 100_000 + b"]" * 100_000):
        entry.write_bytes(junk)
        assert load(path).tasks["copy"].input.provider_path == "counter-input-provider"
