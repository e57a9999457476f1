from mindguard import taxonomy
from mindguard.cli import main


def test_labels_and_policy_cover_every_definition():
    policy = taxonomy.render_policy()
    assert taxonomy.LABELS == ("safe", "unsafe_self_harm_risk", "unsafe_harm_to_others")
    for d in taxonomy.DEFINITIONS:
        assert d.name in policy
        assert all(x in policy for x in d.includes)
    assert taxonomy.TAXONOMY_VERSION in policy
    assert "Risk persists" in policy


def test_taxonomy_command_prints_policy(capsys):
    assert main(["taxonomy"]) == 0
    assert "unsafe_harm_to_others" in capsys.readouterr().out


def test_unknown_label_definition_lists_allowed():
    import pytest

    with pytest.raises(ValueError, match="allowed: safe"):
        taxonomy.definition("risky")
