"""The provider catalogue: name → image, verbs, config schema.

``catalogue/catalogue.json`` holds the settings (default registry); each provider has its
own versioned data file, ``catalogue/providers/<name>.json``.
``python -m dstream.tooling.catalogue --update`` refreshes each entry's ``verbs`` and
``config_schema`` from the provider classes, and a unit test checks that the file matches
them, so it cannot drift.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dstream.errors import ConfigError

_PACKAGED = Path(__file__).resolve().parents[1] / "catalogue_data" / "catalogue.json"
_CHECKOUT = Path(__file__).resolve().parents[2] / "catalogue" / "catalogue.json"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    version: str
    repository: str
    source: str
    entry: str
    description: str
    verbs: list[str] = field(default_factory=list)
    config_schema: dict[str, Any] = field(default_factory=dict)

    def image(self, registry: str | None = None) -> str:
        return f"{registry or default_registry()}/{self.repository}:{self.version}"

    def to_json(self, registry: str | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "image": self.image(registry),
            "description": self.description,
            "verbs": self.verbs,
            "config_schema": self.config_schema,
        }


def catalogue_path() -> Path:
    return _CHECKOUT if _CHECKOUT.exists() else _PACKAGED


def _raw() -> dict[str, Any]:
    path = catalogue_path()
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the provider catalogue {path}: {exc}") from None


def default_registry() -> str:
    return os.environ.get("DSTREAM_REGISTRY") or str(_raw().get("default_registry") or "127.0.0.1:5000")


def _entry_files() -> list[Path]:
    folder = catalogue_path().parent / str(_raw().get("providers_dir", "providers"))
    return sorted(folder.glob("*.json"))


def entries() -> list[Entry]:
    out = []
    for path in _entry_files():
        try:
            out.append(Entry(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid catalogue entry {path}: {exc}") from None
    return out


def find(name: str) -> Entry:
    every = entries()
    for item in every:
        if item.name == name:
            return item
    known = ", ".join(e.name for e in every)
    raise ConfigError(f"no provider named {name!r} in the catalogue (known: {known})")


def describe_class(entry: Entry) -> tuple[list[str], dict[str, Any]]:
    """The verbs and config JSON schema of the provider class behind ``entry``."""
    from dstream.sdk.base import supported_verbs

    module_name, _, class_name = entry.entry.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return supported_verbs(cls), cls.Config.model_json_schema()


def update() -> list[Path]:
    """Refresh every entry's verbs and config schema from its provider class."""
    paths = _entry_files()
    for path in paths:
        item = json.loads(path.read_text())
        verbs, schema = describe_class(Entry(**item))
        item["verbs"] = verbs
        item["config_schema"] = schema
        path.write_text(json.dumps(item, indent=2) + "\n")
    return paths


if __name__ == "__main__":  # python -m dstream.tooling.catalogue --update
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m dstream.tooling.catalogue --update")
    for updated in update():
        sys.stdout.write(f"updated {updated}\n")
