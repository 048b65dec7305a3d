"""Push a provider the way upstream dstream publishes one: an ORAS artifact of executables."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import oras.client
import oras.container
import oras.oci

ARTIFACT_TYPE = "application/vnd.dstream.provider"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def push_artifact(
    registry: str,
    repository: str,
    tag: str,
    executables: dict[str, bytes],
    description: str,
    client: oras.client.OrasClient | None = None,
) -> str:
    """Push ``plugin.<os>_<arch>`` files plus provider.json; returns the manifest digest.
    ``client``: an oras client already set up to log in (default: anonymous, plain HTTP)."""
    client = client or oras.client.OrasClient(hostname=registry, insecure=True)
    target = oras.container.Container(f"{registry}/{repository}:{tag}")
    manifest = oras.oci.NewManifest()
    manifest["artifactType"] = ARTIFACT_TYPE
    with tempfile.TemporaryDirectory() as tmp:
        files = dict(executables)
        files["provider.json"] = json.dumps(
            {
                "name": repository.rsplit("/", 1)[-1],
                "version": tag,
                "description": description,
                "type": "input",
                "sdk_version": "0.1.1",
                "config_schema": {},
                "platforms": [t.removeprefix("plugin.") for t in executables],
            }
        ).encode()
        for title, content in files.items():
            path = Path(tmp) / title
            path.write_bytes(content)
            layer = oras.oci.NewLayer(str(path), media_type="application/vnd.oci.image.layer.v1.tar")
            layer["annotations"] = {"org.opencontainers.image.title": title}
            client.upload_blob(str(path), target, layer)
            manifest["layers"].append(layer)
        config_path = Path(tmp) / "config.json"
        config_path.write_bytes(b"{}")
        config = oras.oci.NewLayer(str(config_path), media_type=EMPTY_CONFIG)
        client.upload_blob(str(config_path), target, config)
        manifest["config"] = config
    manifest["annotations"] = {
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.source": "https://example.invalid/upstream",
        "org.opencontainers.image.version": tag,
    }
    response = client.upload_manifest(manifest, target)
    response.raise_for_status()
    return str(response.headers["Docker-Content-Digest"])
