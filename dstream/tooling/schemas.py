"""Provider config schemas, read without running the provider (like Airbyte's ``spec``).

Where a schema comes from, first found:
- a local image's label ``io.dstream.spec`` (no network);
- the registry: the image config's ``io.dstream.spec`` label, or the ``config_schema`` of an
  upstream-style artifact's ``provider.json`` (no pull, no run);
- the provider catalogue, by provider name (``provider_path`` names an installed provider).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstream import log
from dstream.config.models import StageBlock
from dstream.errors import DistributionError, DStreamError, Problem
from dstream.tooling import catalogue

if TYPE_CHECKING:
    from dstream.config.models import Document, ProviderBlock

_log = log.get("schemas")
SPEC_LABEL = "io.dstream.spec"


def _from_catalogue(name: str) -> dict[str, Any] | None:
    for entry in catalogue.entries():
        if entry.name == name:
            return entry.config_schema or None
    return None


def _from_local_image(ref: str) -> dict[str, Any] | None:
    try:
        from dstream.runtime.docker import DockerEngine

        found = DockerEngine().image(ref)
    except DStreamError:
        return None
    if found is None:
        return None
    label = ((found.get("Config") or {}).get("Labels") or {}).get(SPEC_LABEL)
    return dict(json.loads(label)) if label else {}


def _from_registry(ref: str) -> dict[str, Any] | None:
    from dstream.distribution.reference import parse
    from dstream.distribution.registry import DOCKER_LIST, OCI_INDEX, RegistryClient

    parsed = parse(ref)
    client = RegistryClient()
    manifest = client.manifest(parsed)
    if manifest.media_type in (OCI_INDEX, DOCKER_LIST):
        chosen = next(
            (m for m in manifest.body.get("manifests", []) if (m.get("platform") or {}).get("architecture") == "amd64"),
            (manifest.body.get("manifests") or [None])[0],
        )
        if chosen is None:
            return None
        manifest = client.manifest(parsed, chosen["digest"])
    if manifest.kind == "artifact":
        for layer in manifest.layers():
            if (layer.get("annotations") or {}).get("org.opencontainers.image.title") == "provider.json":
                info = json.loads(client.blob(parsed, str(layer["digest"])))
                return dict(info.get("config_schema") or {}) or None
        return None
    config_digest = (manifest.body.get("config") or {}).get("digest")
    if not config_digest:
        return None
    config = json.loads(client.blob(parsed, str(config_digest)))
    label = ((config.get("config") or {}).get("Labels") or {}).get(SPEC_LABEL)
    return dict(json.loads(label)) if label else {}


def find_schema(ref_or_name: str) -> tuple[dict[str, Any] | None, str]:
    """The config schema of a provider reference, catalogue name or path; and where it came from."""
    name = Path(ref_or_name).name
    if "/" not in ref_or_name or Path(ref_or_name).exists():
        schema = _from_catalogue(name)
        return (schema, "the provider catalogue") if schema else (None, "")
    schema = _from_local_image(ref_or_name)
    if schema is not None:
        return (schema or None), f"the {SPEC_LABEL} label of the local image"
    try:
        schema = _from_registry(ref_or_name)
    except DistributionError as exc:
        _log.debug("no schema from the registry for %s: %s", ref_or_name, exc)
        return None, ""
    return (schema or None), "the registry"


def block_schema(block: ProviderBlock) -> tuple[dict[str, Any] | None, str]:
    return find_schema(block.provider_ref or block.provider_path or "")


def check_document(document: Document) -> tuple[list[Problem], list[str]]:
    """Every config of a valid document that breaks its provider's schema; and notes on
    providers whose schema could not be found (not errors)."""
    stages = [
        StageBlock(task.name, role, block, at) for task in document.tasks.values() for role, block, at in task.stages
    ]
    return check_stages(stages, document.lines, str(document.path), document.secrets)


def check_stages(
    stages: list[StageBlock], lines: dict[str, int], file_name: str, secrets: frozenset[str]
) -> tuple[list[Problem], list[str]]:
    """Every config of these provider blocks that breaks its provider's schema, with the line
    that holds it (``lines``: the loader's); and notes on providers without a known schema."""
    from jsonschema import Draft202012Validator

    from dstream.config.loader import by_line
    from dstream.redact import Redactor
    from dstream.sdk.validation import did_you_mean

    problems: list[Problem] = []
    notes: list[str] = []
    redact = Redactor(secrets)  # jsonschema messages quote the value they refuse
    # Finding a schema may inspect an image or ask the registry: once per provider.
    found: dict[str, tuple[dict[str, Any] | None, str]] = {}
    for task, role, block, at in stages:
        source_ref = block.provider_ref or block.provider_path or ""
        if source_ref not in found:
            found[source_ref] = block_schema(block)
        schema, source = found[source_ref]
        if schema is None:
            notes.append(f"{task} {role}: no config schema known for {block.source}; config not checked")
            continue
        validator = Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(block.config), key=lambda e: list(e.absolute_path)):
            path = [str(p) for p in error.absolute_path]
            key = path[0] if path else ""
            hint = ""
            if error.validator == "additionalProperties" and not path:
                known = set(schema.get("properties", {}))
                extra = sorted(set(block.config) - known)
                key = extra[0] if extra else ""
                hint = did_you_mean(key, known) if key else ""
            line = (
                lines.get(f"{task}/{at}/config/{key}") or lines.get(f"{task}/{at}/config") or lines.get(f"{task}/{at}")
            )
            where = ".".join(["config", *path]) if path else "config"
            message = redact(_message(error)) + hint
            problems.append(Problem(file_name, line, f"{task} {role} {where}: {message} (schema from {source})"))
    return by_line(problems), notes


def _message(error: Any) -> str:
    """jsonschema's message, except for a choice of forms (a duration: a number or "500ms"),
    where "not valid under any of the given schemas" would say nothing: the field's own
    description says what it takes."""
    described = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator in ("anyOf", "oneOf") and described:
        return f"{error.instance!r} is not accepted: {described}"
    return str(error.message)
