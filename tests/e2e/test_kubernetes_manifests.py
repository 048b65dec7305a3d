"""``dstream deploy TASK --print kubernetes``: manifests Kubernetes accepts, for any task name.

The schemas come from kubernetes-validate (the OpenAPI schemas of a current Kubernetes);
names and labels are checked with the rules of kubernetes/apimachinery
(pkg/util/validation/validation.go, pkg/api/validate/content/kube.go), which the
schemas do not carry.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # max 63
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # max 63
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")  # the part after an optional prefix/
ODD_NAMES = [
    "My_Task: x",
    "orders",
    "UPPER.Case.Name",
    "ünïcødé tâsk",
    "-lead-and-trail-",
    "dots...and__underscores__",
    "123",
    "x" * 100,
    "a/b & c:d@e",
]


def _task_file(task_file: Callable[..., Path], names: list[str]) -> Path:
    blocks = "".join(
        f"""
task {json.dumps(name, ensure_ascii=False)} {{
  input {{
    provider_path = "counter-input-provider"
    config {{ max_count = 3 }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{ path = env("OUT_PATH", "/tmp/out.jsonl") }}
  }}
}}
"""
        for name in names
    )
    return task_file(blocks)


def _print(path: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    args = ["-f", str(path), "--print", "kubernetes", "--image", "reg/dstream:1", *extra, "--", name]
    result = run_cli("deploy", *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def _check_label(key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    assert not prefix or (len(prefix) <= 253 and all(DNS1123_LABEL.match(p) for p in prefix.split("."))), key
    assert len(name) <= 63, key
    assert LABEL_NAME.match(name), key
    assert len(value) <= 63, (key, value)
    assert LABEL_VALUE.match(value), (key, value)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_printed_manifests_validate_against_kubernetes(task_file: Callable[..., Path], name: str) -> None:
    path = _task_file(task_file, [name])
    docs = _print(path, name, "--replicas", "1")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret", "Deployment"]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the path of what is wrong
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert DNS1123_LABEL.match(meta["name"]), meta["name"]
        for key, value in meta["labels"].items():
            _check_label(key, value)
        assert meta["annotations"]["io.dstream/task"] == name  # the real name survives
    config_map, secret, deployment = docs
    assert config_map["data"]["dstream.hcl"] == path.read_text()
    assert secret["stringData"] == {"OUT_PATH": "<set me>"}
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    for key, value in spec["template"]["metadata"]["labels"].items():
        _check_label(key, value)
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["run", name, "-f", "/etc/dstream/dstream.hcl"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["task"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_names_that_sanitise_alike_stay_distinct(task_file: Callable[..., Path]) -> None:
    names = ["My_Task", "my-task", "my task"]
    path = _task_file(task_file, names)
    printed = {_print(path, name)[0]["metadata"]["name"] for name in names}
    assert len(printed) == 3
    assert "dstream-my-task" in printed  # a name that is already valid is kept as it is
