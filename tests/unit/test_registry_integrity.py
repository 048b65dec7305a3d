"""A digest (a pin or a dstream.lock entry) names the bytes that run: against a registry that
lies (tests/fake_registry.py). Each case was run against the code before this change and
failed there (security review round 3, rows 1 and 17)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstream.config import load
from dstream.distribution import artifacts
from dstream.distribution.lock import LockFile
from dstream.distribution.reference import parse
from dstream.distribution.registry import Manifest, RegistryClient
from dstream.errors import DistributionError
from tests.conftest import run_cli
from tests.fake_registry import FakeRegistry, Reply, sha256, stream_of, stream_of_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = "dstream/file-input-provider"
GOOD = b'#!/bin/sh\necho \'{"data": {"v": 1}, "metadata": {}}\'\n'


def _socket_buffers() -> int:
    """The most the kernel lets a TCP connection hold in flight (receive plus send buffer,
    the third field of tcp_rmem/tcp_wmem), plus slack: all a registry can push before a
    client that stopped reading hangs up."""
    try:
        return sum(int(Path(f"/proc/sys/net/ipv4/tcp_{kind}").read_text().split()[2]) for kind in ("rmem", "wmem"))
    except (OSError, ValueError, IndexError):
        return 64 * 1024 * 1024


BUFFERS = _socket_buffers() + 8 * 1024 * 1024
HUGE = 4 * BUFFERS  # what the liar offers: all of it would reach a client that reads it all
SCHEMA_CAP = 16 * 1024 * 1024  # registry.MAX_SCHEMA_BLOB


def _evil(marker: Path) -> bytes:
    return f"#!/bin/sh\ntouch {marker}\n".encode()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        yield registry


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "docker").mkdir()
    return {"DSTREAM_CACHE": str(tmp_path / "home" / "cache"), "DOCKER_CONFIG": str(tmp_path / "docker")}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSTREAM_CACHE", str(tmp_path / "home" / "cache"))
    (tmp_path / "docker-empty").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-empty"))


def _task(task_file: Callable[..., Path], ref: str) -> Path:
    return task_file(
        f"""
        task "t" {{
          input {{ provider_ref = "{ref}" }}
          output {{
            provider_path = "console-output-provider"
            config {{ outputFormat = "jsonl" }}
          }}
        }}
        """
    )


def _plugins(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.startswith(("plugin", ".plugin")))


def test_a_pinned_reference_whose_content_was_substituted_is_refused_and_never_runs(
    fake: FakeRegistry, task_file: Callable[..., Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    pinned = fake.add_artifact(REPO, "1.0.0", {"plugin.linux_amd64": GOOD})
    marker = tmp_path / "PWNED"
    other = fake.artifact_manifest({"plugin.linux_amd64": _evil(marker)})
    # The registry serves other bytes under the pinned digest, and claims they are that digest.
    fake.manifests[(REPO, pinned)] = Reply(other, {"Docker-Content-Digest": pinned})
    result = run_cli("run", "t", "-f", str(_task(task_file, f"{fake.host}/{REPO}@{pinned}")), env=cli_env)
    assert result.returncode == 1, result.stdout
    assert not marker.exists()
    assert f"{fake.host}/{REPO}@{pinned}" in result.stderr
    assert pinned in result.stderr
    assert sha256(other) in result.stderr
    assert "Traceback" not in result.stderr
    assert _plugins(tmp_path) == []


def test_a_locked_reference_whose_content_was_substituted_is_refused_and_never_runs(
    fake: FakeRegistry, task_file: Callable[..., Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    locked = fake.add_artifact(REPO, "1.0.0", {"plugin.linux_amd64": GOOD})
    path = _task(task_file, f"{fake.host}/{REPO}:1.0.0")
    assert run_cli("lock", "-f", str(path), env=cli_env).returncode == 0
    assert locked in (path.parent / "dstream.lock").read_text()
    marker = tmp_path / "PWNED"
    other = fake.artifact_manifest({"plugin.linux_amd64": _evil(marker)})
    fake.manifests[(REPO, "1.0.0")] = Reply(other, {"Docker-Content-Digest": locked})  # the header lies
    result = run_cli("run", "t", "-f", str(path), env=cli_env)
    assert result.returncode == 1, result.stdout
    assert not marker.exists()
    assert locked in result.stderr
    assert sha256(other) in result.stderr
    assert f"{fake.host}/{REPO}:1.0.0" in result.stderr
    # Without the lie in the header, the same substitution meets the lock file.
    fake.manifests[(REPO, "1.0.0")] = Reply(other, {"Docker-Content-Digest": sha256(other)})
    again = run_cli("run", "t", "-f", str(path), env=cli_env)
    assert again.returncode == 1
    assert not marker.exists()
    assert locked in again.stderr
    assert sha256(other) in again.stderr


@pytest.mark.parametrize(
    "header", ["sha256:/../../../../../../escape", "sha256:" + "0" * 64, "md5:abc", "sha512:" + "0" * 128]
)
def test_a_docker_content_digest_header_that_disagrees_is_refused(fake: FakeRegistry, header: str) -> None:
    body = fake.artifact_manifest({"plugin.linux_amd64": GOOD})
    fake.manifests[(REPO, "1.0.0")] = Reply(body, {"Docker-Content-Digest": header})
    with pytest.raises(DistributionError) as refused:
        RegistryClient().manifest(parse(f"{fake.host}/{REPO}:1.0.0"))
    assert sha256(body) in str(refused.value)
    assert header[:60] in str(refused.value)


def test_a_header_in_another_algorithm_is_checked_with_it_and_sha256_is_used(fake: FakeRegistry) -> None:
    import hashlib

    body = fake.artifact_manifest({"plugin.linux_amd64": GOOD})
    fake.manifests[(REPO, "1.0.0")] = Reply(
        body, {"Docker-Content-Digest": "sha512:" + hashlib.sha512(body).hexdigest()}
    )
    assert RegistryClient().manifest(parse(f"{fake.host}/{REPO}:1.0.0")).digest == sha256(body)
    fake.manifests[(REPO, "1.0.0")] = Reply(body, {})  # no header at all: the content decides
    assert RegistryClient().manifest(parse(f"{fake.host}/{REPO}:1.0.0")).digest == sha256(body)


def test_a_traversal_digest_never_becomes_a_path(
    fake: FakeRegistry, task_file: Callable[..., Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The review's case C: the header was the cache folder name, and the executable landed
    wherever it pointed."""
    marker = tmp_path / "PWNED"
    body = fake.artifact_manifest({"plugin.linux_amd64": _evil(marker)})
    fake.manifests[(REPO, "1.0.0")] = Reply(body, {"Docker-Content-Digest": "sha256:/../../../../escape"})
    result = run_cli("run", "t", "-f", str(_task(task_file, f"{fake.host}/{REPO}:1.0.0")), env=cli_env)
    assert result.returncode == 1
    assert not marker.exists()
    assert _plugins(tmp_path) == []
    assert "sha256:/../../../../escape" in result.stderr


def test_a_traversal_layer_digest_is_refused_before_any_request(fake: FakeRegistry, tmp_path: Path) -> None:
    layer = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": "sha256:../../../../escape",
        "size": 3,
        "annotations": {"org.opencontainers.image.title": "plugin.linux_amd64"},
    }
    body = {"schemaVersion": 2, "artifactType": "application/vnd.dstream.provider", "layers": [layer]}
    manifest = Manifest(digest=sha256(b"x"), media_type="application/vnd.oci.image.manifest.v1+json", body=body)
    with pytest.raises(DistributionError, match="is not a digest"):
        artifacts.fetch_executable(parse(f"{fake.host}/{REPO}:1.0.0"), manifest)
    assert not [s for s in fake.seen if "/blobs/" in s.path]
    assert _plugins(tmp_path) == []


@pytest.mark.parametrize("digest", ["sha256:/../../../../escape", "sha256:ABC", "sha256:" + "a" * 63])
def test_a_lock_file_with_a_malformed_digest_is_refused(tmp_path: Path, digest: str) -> None:
    path = tmp_path / "dstream.lock"
    path.write_text(f'provider "127.0.0.1:5000/dstream/x:1" {{\n  digest = "{digest}"\n  kind = "artifact"\n}}\n')
    with pytest.raises(DistributionError, match="not a valid lock file"):
        LockFile.load(path)
    with pytest.raises(DistributionError, match="is not a digest"):
        LockFile(path).set("127.0.0.1:5000/dstream/x:1", digest, "artifact")


@pytest.mark.parametrize(
    "ref",
    ['127.0.0.1:5000/x:1" {\n}\nprovider "evil', '127.0.0.1:5000/x:${env("HOME")}', 'evil"host.io/x:1'],
)
def test_a_reference_that_would_break_out_of_the_lock_file_is_never_written(tmp_path: Path, ref: str) -> None:
    lock = LockFile(tmp_path / "dstream.lock")
    with pytest.raises(DistributionError):
        lock.set(ref, "sha256:" + "a" * 64, "image")
    lock.save()
    assert LockFile.load(tmp_path / "dstream.lock").entries == {}


def test_an_executable_longer_than_its_declared_size_is_cut_off_and_never_kept(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.add_artifact(REPO, "1.0.0", {"plugin.linux_amd64": GOOD})
    fake.blobs[sha256(GOOD)] = Reply(stream_of(HUGE))  # endless, no Content-Length
    ref = parse(f"{fake.host}/{REPO}:1.0.0")
    manifest = RegistryClient().manifest(ref)
    with pytest.raises(DistributionError, match=rf"larger than the {len(GOOD)} bytes allowed"):
        artifacts.fetch_executable(ref, manifest)
    assert fake.sent_of(sha256(GOOD)) < BUFFERS
    assert _plugins(tmp_path) == []


def test_an_executable_whose_bytes_do_not_match_its_digest_is_never_kept(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.add_artifact(REPO, "1.0.0", {"plugin.linux_amd64": GOOD})
    evil = _evil(tmp_path / "PWNED")[: len(GOOD)].ljust(len(GOOD), b"#")  # the declared size, other bytes
    fake.blobs[sha256(GOOD)] = Reply(evil)
    ref = parse(f"{fake.host}/{REPO}:1.0.0")
    with pytest.raises(DistributionError) as refused:
        artifacts.fetch_executable(ref, RegistryClient().manifest(ref))
    assert sha256(GOOD) in str(refused.value)
    assert sha256(evil) in str(refused.value)
    assert _plugins(tmp_path) == []


def test_a_schema_blob_is_refused_from_its_content_length_or_once_it_passes_the_cap(fake: FakeRegistry) -> None:
    config = json.dumps({"config": {"Labels": {}}}).encode()
    ref = parse(f"{fake.host}/{REPO}:1.0.0")
    fake.blobs[sha256(config)] = Reply(stream_of(HUGE), {"Content-Length": str(HUGE)})
    with pytest.raises(DistributionError, match=f"is {HUGE} bytes, more than the {SCHEMA_CAP} allowed"):
        RegistryClient().blob(ref, sha256(config))
    assert fake.sent_of(sha256(config)) < BUFFERS
    del fake.sent[sha256(config)]
    fake.blobs[sha256(config)] = Reply(stream_of(HUGE))  # no Content-Length
    with pytest.raises(DistributionError, match="larger than"):
        RegistryClient().blob(ref, sha256(config))
    assert fake.sent_of(sha256(config)) < BUFFERS


def test_a_manifest_is_read_with_a_cap(fake: FakeRegistry) -> None:
    fake.manifests[(REPO, "1.0.0")] = Reply(stream_of(HUGE))
    with pytest.raises(DistributionError, match="larger than"):
        RegistryClient().manifest(parse(f"{fake.host}/{REPO}:1.0.0"))


def test_an_honest_artifact_is_downloaded_into_a_private_cache(fake: FakeRegistry, tmp_path: Path) -> None:
    digest = fake.add_artifact(REPO, "1.0.0", {"plugin.linux_amd64": GOOD})
    ref = parse(f"{fake.host}/{REPO}:1.0.0")
    path = artifacts.fetch_executable(ref, RegistryClient().manifest(ref))
    assert path == tmp_path / "home" / "cache" / "artifacts" / digest.replace(":", "-") / "plugin"
    assert path.read_bytes() == GOOD
    assert path.stat().st_mode & 0o777 == 0o755
    assert path.parent.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["plugin"]  # no temporary file left


@pytest.mark.parametrize("mode", [0o775, 0o777])
def test_an_executable_cache_others_can_write_to_is_refused(fake: FakeRegistry, tmp_path: Path, mode: int) -> None:
    digest = fake.add_artifact(REPO, "1.0.0", {"plugin.linux_amd64": GOOD})
    cache = tmp_path / "home" / "cache" / "artifacts"
    planted = cache / digest.replace(":", "-") / "plugin"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(GOOD)  # an executable someone else could have replaced at any time
    cache.chmod(mode)
    ref = parse(f"{fake.host}/{REPO}:1.0.0")
    with pytest.raises(DistributionError, match=r"writable by other users .*chmod go-w"):
        artifacts.fetch_executable(ref, RegistryClient().manifest(ref))


def test_a_refused_substitution_never_falls_back_to_a_local_image(
    fake: FakeRegistry, task_file: Callable[..., Path]
) -> None:
    """`run` falls back to a local image of the same name when the registry fails (a provider
    author's loop); a registry caught lying is not a failure to work around."""
    import asyncio

    from dstream.distribution.resolve import resolve_for_run
    from dstream.runtime.base import ProviderSpec
    from dstream.task.launch import LaunchOptions

    body = fake.artifact_manifest({"plugin.linux_amd64": GOOD})
    fake.manifests[(REPO, "1.0.0")] = Reply(body, {"Docker-Content-Digest": "sha256:" + "0" * 64})
    ref = f"{fake.host}/{REPO}:1.0.0"
    looked_up: list[str] = []

    class Engine:
        def image(self, name: str) -> dict[str, str]:
            looked_up.append(name)
            return {"Id": "sha256:local"}  # a local image of that name exists

    class Runtime:
        engine = Engine()

    document = load(_task(task_file, ref), environ={})
    task = document.tasks["t"]
    spec = ProviderSpec(role="input", task="t", run_id="r", block=task.input, base_dir=document.base_dir, labels={})
    options = LaunchOptions(runtimes={"docker": Runtime()})  # type: ignore[dict-item]
    with pytest.raises(DistributionError, match=r"Docker-Content-Digest"):
        asyncio.run(resolve_for_run(document, spec, options))
    assert looked_up == []


# -- properties: against a simple reference, on many random cases ----------------------------

_DIGESTS = st.one_of(
    st.binary(max_size=64).map(sha256),
    st.text(alphabet="0123456789abcdefABCDEF:/.sha256", max_size=80),
    st.builds(lambda s: "sha256:" + s, st.text(alphabet="0123456789abcdef/.", min_size=60, max_size=66)),
)


@settings(derandomize=True)
@given(value=_DIGESTS)
def test_a_digest_is_accepted_exactly_when_it_is_sha256_and_64_lowercase_hex(value: str) -> None:
    from dstream.distribution import digests

    reference = value.startswith("sha256:") and len(value) == 71 and set(value[7:]) <= set("0123456789abcdef")
    assert digests.is_digest(value) is reference
    assert digests.is_digest(value + "\n") is False


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        yield registry


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300),
    pinned=st.booleans(),
    pin_is_true=st.booleans(),
    header=st.sampled_from(["none", "true", "false", "garbage"]),
)
def test_a_manifest_is_accepted_exactly_when_its_bytes_hash_to_the_pin_and_the_header(
    shared_fake: FakeRegistry, body: bytes, pinned: bool, pin_is_true: bool, header: str
) -> None:
    """Differential against the rule itself: accepted iff (no pin, or sha256(bytes) is the pin)
    and (no header, or the header names the bytes); the digest returned is sha256(bytes)."""
    manifest = json.dumps({"schemaVersion": 2, "padding": body.hex()}).encode()
    true = sha256(manifest)
    pin = true if pin_is_true else sha256(manifest + b" ")
    headers = {
        "none": {},
        "true": {"Docker-Content-Digest": true},
        "false": {"Docker-Content-Digest": sha256(body)},
        "garbage": {"Docker-Content-Digest": "sha256:/../" + body.hex()[:20]},
    }[header]
    reference = pin if pinned else "tag"
    shared_fake.manifests[(REPO, reference)] = Reply(manifest, headers)
    accept = (not pinned or pin_is_true) and header in ("none", "true")
    ref = parse(f"{shared_fake.host}/{REPO}" + (f"@{pin}" if pinned else ":tag"))
    if accept:
        assert RegistryClient().manifest(ref).digest == true
    else:
        with pytest.raises(DistributionError, match=true):
            RegistryClient().manifest(ref)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.binary(min_size=0, max_size=2048),
    served=st.one_of(st.none(), st.binary(max_size=4096)),
    length_header=st.booleans(),
)
def test_an_executable_is_kept_exactly_when_it_has_the_declared_size_and_digest(
    shared_fake: FakeRegistry, content: bytes, served: bytes | None, length_header: bool
) -> None:
    """Whatever the registry sends for a layer (the right bytes, others, shorter, longer,
    with or without Content-Length), the cache ends up with the right executable or with
    nothing at all."""
    import tempfile

    body = shared_fake.artifact_manifest({"plugin.linux_amd64": content})
    sent = content if served is None else served
    shared_fake.blobs[sha256(content)] = Reply(sent if length_header else stream_of_bytes(sent))
    shared_fake.manifests[(REPO, "prop")] = Reply(body)
    ref = parse(f"{shared_fake.host}/{REPO}:prop")
    with tempfile.TemporaryDirectory() as home:
        os.environ["DSTREAM_CACHE"] = home  # the autouse fixture's monkeypatch restores it
        manifest = RegistryClient().manifest(ref)
        if sent == content:
            path = artifacts.fetch_executable(ref, manifest)
            assert path.read_bytes() == content
            assert _plugins(Path(home)) == [path]
        else:
            with pytest.raises(DistributionError, match=sha256(content)):
                artifacts.fetch_executable(ref, manifest)
            assert _plugins(Path(home)) == []
