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
    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment"]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the path of what is wrong
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert DNS1123_LABEL.match(meta["name"]), meta["name"]
        for key, value in meta["labels"].items():
            _check_label(key, value)
        assert meta["annotations"]["io.dstream/task"] == name  # the real name survives
    config_map, secret, claim, deployment = docs
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
    assert volumes["secrets"]["secret"]["defaultMode"] == 0o400  # not readable by a provider's unprivileged uid
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not any("emptyDir" in v for v in volumes.values())


def test_names_that_sanitise_alike_stay_distinct(task_file: Callable[..., Path]) -> None:
    names = ["My_Task", "my-task", "my task"]
    path = _task_file(task_file, names)
    printed = {_print(path, name)[0]["metadata"]["name"] for name in names}
    assert len(printed) == 3
    assert "dstream-my-task" in printed  # a name that is already valid is kept as it is


LEASED = """
task "t" {
  lease {
    backend = "%s"
    %s
  }
  input { provider_path = "counter-input-provider" }
  output { provider_path = "console-output-provider" }
}
%s
"""
AZURE = 'connection_string = env("AZURE_STORAGE_CONNECTION_STRING")'


def test_replicas_need_an_azure_blob_lease_and_state_is_never_an_empty_dir(task_file: Callable[..., Path]) -> None:
    """Security review row 7: two replicas with a file lease were both active, and state
    lived on an emptyDir that a reschedule loses."""
    file_lease = task_file(LEASED % ("file", "", ""), "file.hcl")
    refused = run_cli("deploy", "t", "-f", str(file_lease), "--print", "kubernetes", "--replicas", "2")
    assert refused.returncode == 1
    assert 'lease { backend = "azure_blob" }' in refused.stderr
    one = run_cli("deploy", "t", "-f", str(file_lease), "--print", "kubernetes", "--replicas", "1")
    assert one.returncode == 0, one.stderr
    assert "PersistentVolumeClaim" in one.stdout
    assert "# state: SQLite on the PersistentVolumeClaim" in one.stdout
    assert "emptyDir" not in one.stdout
    shared = task_file(LEASED % ("azure_blob", AZURE, f'state {{\n  backend = "azure_blob"\n  {AZURE}\n}}'), "az.hcl")
    azure = {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    two = run_cli("deploy", "t", "-f", str(shared), "--print", "kubernetes", "--replicas", "2", env=azure)
    assert two.returncode == 0, two.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(two.stdout) if d]
    assert kinds == ["ConfigMap", "Secret", "Deployment"]  # state in Azure Blob: no volume at all
    assert "# state: Azure Blob" in two.stdout
    assert "emptyDir" not in two.stdout


def test_the_pod_names_itself_through_the_downward_api(task_file: Callable[..., Path]) -> None:
    path = _task_file(task_file, ["orders"])
    deployment = _print(path, "orders")[-1]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DSTREAM_OWNER_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["DSTREAM_OWNER_POD"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


LITERAL = "LiteralPw123"


def test_a_literal_secret_goes_into_the_secret_not_the_config_map(task_file: Callable[..., Path]) -> None:
    """Security review row 13: ``dsn = "postgres://app:LiteralPw123@db/x"`` was in the ConfigMap."""
    path = task_file(
        f"""
        locals {{
          pw = "Other{LITERAL}"
        }}
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "console-output-provider"
            config {{
              dsn      = "postgres://app:{LITERAL}@db/x"  # a literal, as the review found
              password = local.pw
              note     = "no secret here"
            }}
          }}
        }}
        """
    )
    docs = _print(path, "t")
    config_map, secret = docs[0], docs[1]
    text = config_map["data"]["dstream.hcl"]
    assert LITERAL not in text
    assert 'note     = "no secret here"' in text
    moved = {k: v for k, v in secret["stringData"].items() if k.startswith("DSTREAM_LITERAL_")}
    assert sorted(moved.values()) == [f"Other{LITERAL}", f"postgres://app:{LITERAL}@db/x"]
    for name in moved:
        assert f'env("{name}")' in text
    # The rewritten file loads to the same task once the Secret's values are in the environment.
    from dstream.config import load

    rewritten = path.parent / "rewritten.hcl"
    rewritten.write_text(text)
    assert load(rewritten, environ=moved).tasks == load(path, environ={}).tasks


def test_a_literal_secret_that_cannot_be_moved_is_refused_with_its_line(task_file: Callable[..., Path]) -> None:
    path = task_file(
        f"""
        task "t" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{
            provider_path = "console-output-provider"
            config {{
              dsn = <<EOT
        postgres://app:{LITERAL}@db/x
        EOT
            }}
          }}
        }}
        """
    )
    result = run_cli("deploy", "t", "-f", str(path), "--print", "kubernetes")
    assert result.returncode == 1
    assert f"{path}:8: a literal secret" in result.stderr  # the heredoc line that holds it
    assert LITERAL not in result.stdout + result.stderr
