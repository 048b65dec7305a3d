"""Strings that cannot travel: a lone surrogate escape (``"a\\uD800b"``) or an environment
value that is not UTF-8 loaded before and crashed at run time, when the command envelope was
encoded. They are refused at load, with FILE:LINE."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from dstream.config import lint, load
from dstream.errors import ConfigError
from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TEMPLATE = """\
locals {
  prefix = "%(local)s"
}

task "t" {
  input {
    provider_path = "counter-input-provider"
    config {
      max_count = 1
      label     = "%(config)s"
      nested    = { "%(key)s" = "v" }
      joined    = "${local.prefix}-%(interpolated)s"
    }
  }
  output { provider_path = "console-output-provider" }
}
"""
PLAIN = {"local": "p", "config": "c", "key": "k", "interpolated": "i"}
LINES = {"local": 2, "config": 10, "key": 11, "interpolated": 12}


@pytest.mark.parametrize("escape", ["\\uD800", "\\udfff", "\\U0000DC00", "\\uDBFF"])
@pytest.mark.parametrize("where", sorted(LINES))
def test_a_surrogate_escape_is_refused_at_load_with_its_line(
    task_file: Callable[..., Path], escape: str, where: str
) -> None:
    path = task_file(TEMPLATE % {**PLAIN, where: f"a{escape}b"})
    with pytest.raises(ConfigError) as refused:
        load(path)
    expected = f"{path}:{LINES[where]}: {escape} is a UTF-16 surrogate, not a character"
    assert any(str(problem).startswith(expected) for problem in refused.value.problems), refused.value.problems
    assert any(problem.startswith(expected) for problem in lint(path))


def test_characters_written_as_escapes_still_load(task_file: Callable[..., Path]) -> None:
    values = {"local": "\\u00e9", "config": "\\U0001F600", "key": "\\uFFFD", "interpolated": "\\uD7FF\\uE000"}
    document = load(task_file(TEMPLATE % values))
    config = document.tasks["t"].input.config
    assert config["label"] == "\U0001f600"
    assert config["nested"] == {"\ufffd": "v"}
    assert config["joined"] == "\u00e9-\ud7ff\ue000"


@pytest.mark.parametrize("escape", ["\\u12", "\\u12G4", "\\U00110000", "\\u+123", "\\u1_23"])
def test_malformed_unicode_escapes_are_refused(task_file: Callable[..., Path], escape: str) -> None:
    path = task_file(TEMPLATE % {**PLAIN, "config": f"a{escape}zzzzzzzz"})
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert any(str(p).startswith(f"{path}:10: bad escape") for p in refused.value.problems), refused.value.problems


def test_an_environment_value_that_is_not_utf8_is_refused_without_showing_it(task_file: Callable[..., Path]) -> None:
    path = task_file(TEMPLATE.replace('"%(config)s"', 'env("DSN")') % PLAIN)
    # How os.environ holds the bytes b"pw\xff\xfe" of a non-UTF-8 environment (PEP 383).
    value = b"pw\xff\xfesecret".decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError) as refused:
        load(path, {"DSN": value})
    assert f"{path}:10: environment variable DSN is not valid UTF-8" in map(str, refused.value.problems)
    assert "secret" not in str(refused.value)


def test_dstream_run_refuses_a_surrogate_before_starting_anything(task_file: Callable[..., Path]) -> None:
    path = task_file(TEMPLATE % {**PLAIN, "config": "a\\uD800b"})
    result = run_cli("run", "t", "-f", str(path))
    assert result.returncode != 0
    assert f"{path}:10: \\uD800 is a UTF-16 surrogate" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
