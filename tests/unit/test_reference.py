"""OCI reference parsing (ports and digests included, unlike upstream)."""

from __future__ import annotations

import pytest

from dstream.distribution.reference import parse
from dstream.distribution.registry import Manifest, is_insecure
from dstream.errors import DistributionError

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        (
            "127.0.0.1:5000/dstream/counter-input-provider:0.1.0",
            "127.0.0.1:5000",
            "dstream/counter-input-provider",
            "0.1.0",
            None,
        ),
        ("ghcr.io/katasec/mssql-cdc:v1.0.0", "ghcr.io", "katasec/mssql-cdc", "v1.0.0", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("org/img:1", "docker.io", "org/img", "1", None),
        (f"127.0.0.1:5000/a/b@{DIGEST}", "127.0.0.1:5000", "a/b", None, DIGEST),
        (f"127.0.0.1:5000/a/b:1.0@{DIGEST}", "127.0.0.1:5000", "a/b", "1.0", DIGEST),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_pinned_and_str() -> None:
    ref = parse("127.0.0.1:5000/dstream/x:1")
    assert ref.pinned(DIGEST) == f"127.0.0.1:5000/dstream/x@{DIGEST}"
    assert str(ref) == "127.0.0.1:5000/dstream/x:1"
    assert parse("busybox").docker_name == "busybox"


@pytest.mark.parametrize("text", ["", "Upper/Case:1", "a b", "x@sha256:123", "x:bad tag", "x:" + "t" * 200])
def test_invalid_references(text: str) -> None:
    with pytest.raises(DistributionError):
        parse(text)


def test_loopback_registries_are_plain_http() -> None:
    assert is_insecure("127.0.0.1:5000")
    assert is_insecure("localhost:5000")
    assert not is_insecure("ghcr.io")


def test_manifest_kind_from_media_types_not_names() -> None:
    image = Manifest(
        "sha256:1",
        "application/vnd.oci.image.manifest.v1+json",
        {"config": {"mediaType": "application/vnd.oci.image.config.v1+json"}},
    )
    assert image.kind == "image"
    index = Manifest("sha256:2", "application/vnd.oci.image.index.v1+json", {"manifests": []})
    assert index.kind == "image"
    oras1 = Manifest(
        "sha256:3",
        "application/vnd.oci.image.manifest.v1+json",
        {
            "artifactType": "application/vnd.dstream.provider",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
        },
    )
    assert oras1.kind == "artifact"
    oras0 = Manifest(
        "sha256:4",
        "application/vnd.oci.image.manifest.v1+json",
        {"config": {"mediaType": "application/vnd.dstream.provider"}},
    )
    assert oras0.kind == "artifact"
    other = Manifest(
        "sha256:5",
        "application/vnd.oci.image.manifest.v1+json",
        {"config": {"mediaType": "application/vnd.cncf.helm.config.v1+json"}},
    )
    assert other.kind == "unknown"
