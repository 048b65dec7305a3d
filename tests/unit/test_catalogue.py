"""The provider catalogue file matches the provider classes it describes."""

from __future__ import annotations

from dstream.tooling import catalogue


def test_catalogue_verbs_and_schemas_match_the_provider_classes() -> None:
    for entry in catalogue.entries():
        verbs, schema = catalogue.describe_class(entry)
        assert entry.verbs == verbs, f"{entry.name}: run python -m dstream.tooling.catalogue --update"
        assert entry.config_schema == schema, f"{entry.name}: run python -m dstream.tooling.catalogue --update"
        assert entry.name.endswith(("-input-provider", "-transform-provider", "-output-provider"))
        assert entry.kind == entry.name.rsplit("-", 2)[-2]
