import pytest

from mindguard.conversation import Conversation, Message
from mindguard.errors import DataError


def test_user_turn_indexing(conversations):
    c = conversations[0]
    assert c.user_turn_indices() == [0, 2, 4, 6]
    assert c.labelled_turns() == [0, 2, 4, 6]
    assert c.prefix(4)[-1].content.startswith("honestly")


@pytest.mark.parametrize("kwargs,msg", [
    ({"role": "bot", "content": "x"}, "unknown role 'bot'"),
    ({"role": "user", "content": "  "}, "empty content"),
    ({"role": "assistant", "content": "x", "label": "safe"}, "only allowed on user turns"),
    ({"role": "user", "content": "x", "label": "risky"}, "unknown label 'risky'"),
])
def test_validation_errors_name_the_problem(kwargs, msg):
    with pytest.raises(DataError, match=msg):
        Message(**kwargs)


def test_labels_list_must_match_user_turns():
    with pytest.raises(DataError, match="2 user turns but 1 labels"):
        Conversation.from_dicts("x", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                      {"role": "user", "content": "c"}], labels=["safe"])


def test_conversation_needs_a_user_turn():
    with pytest.raises(DataError, match="no user turn"):
        Conversation.from_dicts("x", [{"role": "assistant", "content": "hello"}])
