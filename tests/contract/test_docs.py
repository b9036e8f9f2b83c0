"""Generated documentation matches the code."""

from ops.config_doc import DOC_PATH, reference


def test_configuration_reference_matches_the_settings_classes() -> None:
    assert DOC_PATH.read_text() == reference(), "docs/configuration.md is stale: run `just docs`"
