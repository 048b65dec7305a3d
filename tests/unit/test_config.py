"""HCL task files: locals, env templates, types, and every lint error with its line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from dstream.config import lint, load
from dstream.errors import ConfigError
from dstream.sdk.units import parse_duration, parse_size

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FULL = """\
# a comment
locals {
  tables = ["dbo.Orders", "dbo.Customers"]
  server = { host = "db", port = 1433 }
  prefix = "cdc"
}

task "copy" {
  type = "providers"
  input {
    provider_path = "counter-input-provider"
    config {
      tables     = local.tables
      tables2    = "${local.tables}"
      server     = local.server
      port       = local.server.port
      first      = local.tables[0]
      queue      = "${local.prefix}-${local.server.host}"
      conn       = "{{ env \\"TEST_CONN\\" }}"
      fallback   = "{{ env \\"TEST_UNSET_VAR\\" \\"dflt\\" }}"
      piped      = "{{ env \\"TEST_UNSET_VAR\\" | default \\"pd\\" }}"
      native     = env("TEST_CONN")
      native_def = env("TEST_UNSET_VAR", "nd")
      int        = 42
      float      = 1.5
      neg        = -3
      yes        = true
      nothing    = null
      nested { a = 1
        deeper { b = "two" }
      }
      list       = [1, "two", false, { k = "v" }]
      escaped    = "quote \\" backslash \\\\ $${literal}"
      math       = 2 * 3 + 1
    }
  }
  output {
    provider_path = "console-output-provider"
    config = { outputFormat = "structured", "key with space" = 1 }
  }
}
"""


def test_full_file_keeps_types_and_evaluates_locals_and_env(task_file: Callable[..., Path]) -> None:
    doc = load(task_file(FULL), environ={"TEST_CONN": "Server=db;Password=s3cret!"})
    cfg = doc.task("copy").input.config
    assert cfg["tables"] == ["dbo.Orders", "dbo.Customers"]
    assert cfg["tables2"] == ["dbo.Orders", "dbo.Customers"]  # "${local.x}" alone keeps the list
    assert cfg["server"] == {"host": "db", "port": 1433}
    assert cfg["port"] == 1433
    assert isinstance(cfg["port"], int)
    assert cfg["first"] == "dbo.Orders"
    assert cfg["queue"] == "cdc-db"
    assert cfg["conn"] == "Server=db;Password=s3cret!"
    assert cfg["fallback"] == "dflt"
    assert cfg["piped"] == "pd"
    assert cfg["native"] == "Server=db;Password=s3cret!"
    assert cfg["native_def"] == "nd"
    assert cfg["int"] == 42
    assert cfg["float"] == 1.5
    assert cfg["neg"] == -3
    assert cfg["yes"] is True
    assert cfg["nothing"] is None
    assert cfg["nested"] == {"a": 1, "deeper": {"b": "two"}}
    assert cfg["list"] == [1, "two", False, {"k": "v"}]
    assert cfg["escaped"] == 'quote " backslash \\ ${literal}'
    assert cfg["math"] == 7
    assert doc.task("copy").output.config == {"outputFormat": "structured", "key with space": 1}
    # Values from the environment and credentials are known secrets (for redaction).
    assert "Server=db;Password=s3cret!" in doc.secrets


def test_credentials_inside_connection_strings_are_secrets(task_file: Callable[..., Path]) -> None:
    doc = load(
        task_file(
            """
            task "t" {
              input {
                provider_path = "x"
                config { dsn = "postgresql://user:pa55word@host/db" }
              }
              output {
                provider_path = "y"
                config { connection_string = "Endpoint=sb://x/;SharedAccessKey=abcdEFGH==;" }
              }
            }
            """
        ),
        environ={},
    )
    assert {"pa55word", "abcdEFGH=="} <= doc.secrets


def test_missing_env_variable_is_an_error_naming_it(task_file: Callable[..., Path]) -> None:
    path = task_file(
        """
        task "t" {
          input {
            provider_path = "x"
            config { conn = "{{ env \\"NO_SUCH_VAR_123\\" }}" }
          }
          output { provider_path = "y" }
        }
        """
    )
    with pytest.raises(ConfigError) as err:
        load(path, environ={})
    assert f"{path}:5: environment variable NO_SUCH_VAR_123 is not set" in str(err.value)


def test_config_as_block_or_map_and_repeated_nested_blocks(task_file: Callable[..., Path]) -> None:
    doc = load(
        task_file(
            """
            task "t" {
              input {
                provider_path = "x"
                config {
                  table { name = "a" }
                  table { name = "b" }
                }
              }
              output {
                provider_path = "y"
                config = { n = 1 }
              }
            }
            """
        ),
        environ={},
    )
    assert doc.task("t").input.config == {"table": [{"name": "a"}, {"name": "b"}]}
    assert doc.task("t").output.config == {"n": 1}


LINT_CASES = [
    (
        'task "t" {\n  input {\n    provider_path = "x"\n    colour = 1\n  }\n  output { provider_path = "y" }\n}\n',
        4,
        "unknown setting 'input.colour'",
    ),
    (
        'task "t" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n  wheels { }\n}\n',
        4,
        "unknown setting 'wheels'",
    ),
    ("gadget {\n}\n", 1, "unknown block 'gadget'"),
    (
        'task "t" {\n  input {\n    provider_path = "x"\n    provider_ref = "r:1"\n  }\n  output { provider_path = "y" }\n}\n',
        2,
        "set exactly one of provider_path",
    ),
    ('task "t" {\n  input { provider_path = "x" }\n  output {\n    config = {}\n  }\n}\n', 3, "neither is set"),
    (
        'task "t" {\n  input {\n    provider_path = "x"\n    config { a = local.missing }\n  }\n  output { provider_path = "y" }\n}\n',
        4,
        "undefined local 'local.missing'",
    ),
    (
        'task "t" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n}\n\ntask "t" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n}\n',
        6,
        "duplicate task name 't' (first defined at line 1)",
    ),
    ('task "t" {\n  input {\n    provider_path = \n  }\n}\n', 3, "syntax error"),
    ('task "t" {\n  input { provider_path = "x" }\n}\n', 1, "has no output block"),
    (
        'task "t" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n  on_error = "explode"\n}\n',
        4,
        "on_error",
    ),
    (
        'task "t" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n  stop_timeout = "soon"\n}\n',
        4,
        "expected a duration",
    ),
    (
        'task "t" {\n  input {\n    provider_path = "x"\n    provider_path = "z"\n  }\n  output { provider_path = "y" }\n}\n',
        4,
        "is set twice (first at line 3)",
    ),
    ("locals {\n  a = local.b\n  b = local.a\n}\n", 2, "cycle"),
    (
        'task "t" {\n  input { provider_path = unquoted }\n  output { provider_path = "y" }\n}\n',
        2,
        "unknown name 'unquoted'",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), LINT_CASES)
def test_each_lint_problem_names_file_and_line(
    task_file: Callable[..., Path], text: str, line: int, message: str
) -> None:
    path = task_file(text)
    problems = lint(path, environ={})
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in problems), problems


def test_clean_file_lints_clean(task_file: Callable[..., Path]) -> None:
    assert lint(task_file(FULL), environ={"TEST_CONN": "x"}) == []


def test_all_problems_reported_at_once_sorted_by_line(task_file: Callable[..., Path]) -> None:
    path = task_file(
        'task "a" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n  bad1 = 1\n}\n'
        'task "b" {\n  input { provider_path = "x" }\n  output { provider_path = "y" }\n  bad2 = 2\n}\n'
    )
    problems = lint(path, environ={})
    assert [p.split(": ")[0] for p in problems] == [f"{path}:4", f"{path}:9"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.hcl")


def test_unknown_task_lists_known_ones(task_file: Callable[..., Path]) -> None:
    doc = load(task_file(FULL), environ={"TEST_CONN": "x"})
    with pytest.raises(ConfigError, match=r"no task named 'other' \(tasks: copy\)"):
        doc.task("other")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("2m", 120),
        ("1h", 3600),
        (5, 5.0),
        ("1.5s", 1.5),
        ("1m30s", 90),
        ("1h2m3.5s", 3723.5),
        ("7d", 604800),
        ("250us", 0.00025),
        ("12", 12.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8MiB", 8 * 1024 * 1024),
        ("512k", 512 * 1024),
        ("1KiB", 1024),
        (100, 100),
        ("2GB", 2 * 1024**3),
        ("512m", 536870912),
        ("512M", 536870912),
        ("512mb", 536870912),
        ("1.5g", 1610612736),
        ("64", 64),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_and_duration_are_rejected() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")
    for bad in ("1m30", "-5s", "30 s s", "5x"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    for bad in ("0", "-1m", "5ib", "1q"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
