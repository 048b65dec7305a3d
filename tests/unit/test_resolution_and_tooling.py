"""The shared lock file, one-pass lint, registry errors, schema lookups, undeploy leftovers,
conformance reuse of a resolved provider, and the CLI's start-up and argument checks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dstream.config import check, lint, load
from dstream.config.loader import by_line
from dstream.distribution import resolve
from dstream.distribution.lock import LOCK_FILE, LockFile
from dstream.distribution.reference import DOCKER_HUB_API, parse
from dstream.distribution.registry import OCI_MANIFEST, Manifest, RegistryClient
from dstream.errors import DistributionError, DStreamError, RegistryUnreachable
from dstream.runtime.base import ProviderSpec
from dstream.runtime.local import LocalRuntime
from dstream.task.launch import LaunchOptions
from dstream.tooling import conformance, deploy, schemas

if TYPE_CHECKING:
    from collections.abc import Callable

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
IMAGE_CONFIG = {"config": {"mediaType": "application/vnd.oci.image.config.v1+json"}}

TWO_TASKS = """\
task "one" {
  input {
    provider_path = "counter-input-provider"
    config { count = 1 }
  }
  output {
    provider_path = "console-output-provider"
  }
}
task "two" {
  input {
    provider_path = "counter-input-provider"
    config { count = 2 }
  }
  output {
    provider_path = "console-output-provider"
  }
}
"""


# -- 1. one LockFile shared by both providers of a run --------------------------------------


def test_shared_lock_file_keeps_entries_written_from_two_threads(tmp_path: Path) -> None:
    lock = LockFile(tmp_path / LOCK_FILE)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        try:
            barrier.wait()
            for n in range(200):
                lock.set(f"127.0.0.1:5000/{prefix}:{n}", DIGEST_A, "image")
                lock.save()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("input", "output")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    saved = LockFile.load(tmp_path / LOCK_FILE).entries
    assert len(saved) == 400
    assert "127.0.0.1:5000/input:199" in saved
    assert "127.0.0.1:5000/output:199" in saved


def test_update_lock_from_both_providers_keeps_both_new_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / LOCK_FILE
    old = LockFile(path)
    old.set("127.0.0.1:5000/in:1", DIGEST_A, "image")
    old.set("127.0.0.1:5000/out:1", DIGEST_A, "image")
    old.save()

    def manifest(self: RegistryClient, ref: Any, reference: str | None = None) -> Manifest:
        return Manifest(DIGEST_B, OCI_MANIFEST, IMAGE_CONFIG)

    monkeypatch.setattr(RegistryClient, "manifest", manifest)
    document = load_document(tmp_path)
    options = LaunchOptions(update_lock=True)
    shared = resolve._shared_lock(document, options)
    assert resolve._shared_lock(document, options) is shared
    threads = [
        threading.Thread(target=resolve.resolve_digest, args=(ref, shared, True))
        for ref in ("127.0.0.1:5000/in:1", "127.0.0.1:5000/out:1")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saved = LockFile.load(path).entries
    assert {ref: entry.digest for ref, entry in saved.items()} == {
        "127.0.0.1:5000/in:1": DIGEST_B,
        "127.0.0.1:5000/out:1": DIGEST_B,
    }


def load_document(folder: Path) -> Any:
    path = folder / "dstream.hcl"
    path.write_text(TWO_TASKS)
    return load(path, environ={})


# -- 2. lint loads the file once --------------------------------------------------------


def test_check_returns_the_document_or_the_problems(task_file: Callable[..., Path]) -> None:
    good = task_file(TWO_TASKS)
    document, problems = check(good, environ={})
    assert problems == []
    assert document is not None
    assert sorted(document.tasks) == ["one", "two"]
    bad = task_file('task "x" {\n  bogus = 1\n}\nnope {}\n', name="bad.hcl")
    document, problems = check(bad, environ={})
    assert document is None
    assert problems
    assert [str(p) for p in problems] == lint(bad, environ={})
    assert [p.line for p in problems] == sorted(p.line or 0 for p in problems)  # records, in line order
    assert {p.file for p in problems} == {str(bad)}
    assert problems == by_line(problems)


# -- 3. no asyncio for `dstream --help` -------------------------------------------------


def test_cli_module_does_not_import_asyncio() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, dstream.cli; print('asyncio' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_test_provider_refuses_a_config_that_is_not_an_object() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dstream", "test-provider", "counter-input-provider", "--config", "[1]"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "must be a JSON object" in out.stderr
    assert "Traceback" not in out.stderr


# -- 4. an unreachable registry is its own error ----------------------------------------


def test_unreachable_registry_raises_registry_unreachable() -> None:
    with pytest.raises(RegistryUnreachable, match=r"cannot reach registry 127\.0\.0\.1:1: connection refused"):
        RegistryClient().manifest(parse("127.0.0.1:1/dstream/x:1"))


def test_unreachable_registry_falls_back_to_the_locked_digest(tmp_path: Path) -> None:
    lock = LockFile(tmp_path / LOCK_FILE)
    lock.set("127.0.0.1:1/dstream/x:1", DIGEST_A, "image")
    resolved = resolve.resolve_digest("127.0.0.1:1/dstream/x:1", lock, update_lock=False)
    assert resolved.digest == DIGEST_A
    assert resolved.manifest is None
    with pytest.raises(RegistryUnreachable):
        resolve.resolve_digest("127.0.0.1:1/dstream/y:1", lock, update_lock=False)


def test_other_registry_errors_do_not_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def manifest(self: RegistryClient, ref: Any, reference: str | None = None) -> Manifest:
        raise DistributionError("cannot reach nothing: 404 but worded like an outage")

    monkeypatch.setattr(RegistryClient, "manifest", manifest)
    lock = LockFile(tmp_path / LOCK_FILE)
    lock.set("127.0.0.1:5000/dstream/x:1", DIGEST_A, "image")
    with pytest.raises(DistributionError, match="worded like an outage"):
        resolve.resolve_digest("127.0.0.1:5000/dstream/x:1", lock, update_lock=False)


# -- 5. the host of the registry API ----------------------------------------------------


def test_api_host() -> None:
    assert parse("org/img:1").api_host == DOCKER_HUB_API
    assert parse("busybox").api_host == DOCKER_HUB_API
    assert parse("127.0.0.1:5000/dstream/x:1").api_host == "127.0.0.1:5000"
    assert parse("ghcr.io/org/img").api_host == "ghcr.io"


# -- 6. one schema lookup per provider --------------------------------------------------


def test_check_document_looks_up_each_provider_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def block_schema(block: Any) -> tuple[dict[str, Any] | None, str]:
        calls.append(block.source)
        if block.provider_path == "counter-input-provider":
            return {"type": "object", "properties": {"count": {"type": "string"}}}, "a test"
        return None, ""

    monkeypatch.setattr(schemas, "block_schema", block_schema)
    problems, notes = schemas.check_document(load_document(tmp_path))
    assert len(calls) == 2
    assert [p.message for p in problems] == [
        "one input config.count: 1 is not of type 'string' (schema from a test)",
        "two input config.count: 2 is not of type 'string' (schema from a test)",
    ]
    assert problems == by_line(problems)
    assert len(notes) == 2


# -- 7. undeploy removes only its own service's containers ---------------------------------


def test_undeploy_of_a_task_that_is_not_deployed_removes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review row 6: it used to remove every container labelled with the task name
    (a developer's live run included) and report success."""
    removed: list[str] = []

    class Engine:
        def remove(self, container_id: str) -> None:
            removed.append(container_id)

        def containers(self, *labels: str) -> list[dict[str, Any]]:
            """The engine's label filter: a developer's live run of a task named copy."""
            live = {"Id": "live", "Labels": {"io.dstream.task": "copy", "io.dstream.pid": "4242"}}
            wanted = [label.partition("=") for label in labels]
            ok = all(k in live["Labels"] and (not v or live["Labels"][k] == v) for k, _, v in wanted)
            return [live] if ok else []

    class FakeSwarm:
        def __init__(self, engine: Any) -> None:
            self.engine = engine

        def ensure_active(self) -> None:
            pass

        def service(self, name: str) -> None:
            return None

        def containers(self, *labels: str) -> list[str]:
            return [c["Id"] for c in self.engine.containers(*labels)]

        def services(self) -> list[dict[str, Any]]:
            return []

        def remove_labelled(self, label: str) -> tuple[int, int]:
            return 0, 0

    monkeypatch.setattr(deploy, "DockerEngine", Engine)
    monkeypatch.setattr(deploy, "Swarm", FakeSwarm)
    with pytest.raises(DStreamError, match="task copy is not deployed"):
        deploy.undeploy("copy")
    assert removed == []


# -- 9. the conformance suite resolves its provider once --------------------------------


def test_conformance_resolves_once_and_uses_fresh_run_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def prepare_spec(document: Any, task: Any, role: str, run_id: str, options: Any, block: Any = None) -> Any:
        calls.append(run_id)
        labels = {"io.dstream.task": task.name, "io.dstream.role": role, "io.dstream.run-id": run_id}
        spec = ProviderSpec(role=role, task=task.name, run_id=run_id, block=task.output, base_dir=Path(), labels=labels)
        return LocalRuntime(), spec

    monkeypatch.setattr(conformance, "prepare_spec", prepare_spec)
    suite = conformance.Suite("127.0.0.1:5000/dstream/x:1", {}, None, 5.0, None)

    async def twice() -> list[Any]:
        return [await suite._prepare(), await suite._prepare(), await suite._prepare()]

    prepared = asyncio.run(twice())
    assert len(calls) == 1
    run_ids = [spec.run_id for _, spec in prepared]
    assert len(set(run_ids)) == 3
    for runtime, spec in prepared:
        assert runtime is prepared[0][0]
        assert spec.labels["io.dstream.run-id"] == spec.run_id
        assert spec.labels["io.dstream.role"] == "conformance"
