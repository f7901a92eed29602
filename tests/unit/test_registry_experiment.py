"""The serving experiment as registered-model tags (training/registry.py): read back with defaults,
validated, and a bad tag refused with a reason rather than half-applied."""

from __future__ import annotations

import pytest

from eightbox.training.registry import EXPERIMENT_DEFAULTS, RegistryError, experiment_from_tags

P = "eightbox.experiment."


def test_no_tags_is_everyone_on_the_champion():
    assert experiment_from_tags({}) == EXPERIMENT_DEFAULTS
    assert EXPERIMENT_DEFAULTS["challenger_share"] == EXPERIMENT_DEFAULTS["holdback_share"] == 0.0
    assert EXPERIMENT_DEFAULTS["shadow"] is False


def test_tags_are_read_typed_and_other_tags_or_unknown_settings_are_ignored():
    tags = {P + "challenger_share": "0.25", P + "shadow": "true", P + "interleave_share": "0.1",
            P + "holdback_share": "0.05", P + "salt": "v4", P + "ramp": "later", "owner": "ml-team"}
    assert experiment_from_tags(tags) == {"challenger_share": 0.25, "shadow": True, "interleave_share": 0.1,
                                          "holdback_share": 0.05, "salt": "v4"}


@pytest.mark.parametrize("tags, reason", [
    ({P + "challenger_share": "1.5"}, "challenger_share must be a number in \\[0, 1\\]"),
    ({P + "interleave_share": "-0.1"}, "interleave_share must be a number in \\[0, 1\\]"),
    ({P + "holdback_share": "nan"}, "holdback_share must be a number in \\[0, 1\\]"),
    ({P + "holdback_share": "a lot"}, "holdback_share='a lot' is not a number"),
    ({P + "shadow": "yes"}, "shadow='yes' is not true or false"),
    ({P + "challenger_share": "0.6", P + "holdback_share": "0.5"}, "challenger_share \\+ holdback_share"),
    ({P + "salt": ""}, "salt must be 1-64 characters"),
])
def test_an_invalid_experiment_is_refused_with_the_reason(tags, reason):
    with pytest.raises(RegistryError, match=reason):
        experiment_from_tags(tags)
