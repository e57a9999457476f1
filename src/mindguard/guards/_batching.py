"""Scoring many conversations as one batch, for guards whose cost is per request or per batch.

`BaseGuard.assess_many` goes conversation by conversation. The `hf` guard fills GPU batches and
the served guards fill their request pools better when every turn of a chunk of conversations is
one `assess_batch` call; `FlatBatchMixin` does that and splits the results back.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..conversation import Conversation, Message
from ..errors import DataError
from ._base import Assessment


class FlatBatchMixin:
    """`assess_many` as one `assess_batch` over the turns of all the conversations."""

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:  # pragma: no cover - abstract
        raise NotImplementedError

    def assess_many(self, conversations: Sequence[Conversation], indices: Sequence[Sequence[int]]) -> list[list[Assessment]]:
        contexts: list[Sequence[Message]] = []
        sizes: list[int] = []
        for conv, idx in zip(conversations, indices):
            for i in idx:
                if conv.messages[i].role != "user":
                    raise DataError(f"message {i} of conversation {conv.id!r} is not a user turn")
                contexts.append(conv.prefix(i))
            sizes.append(len(idx))
        flat = self.assess_batch(contexts)
        out, start = [], 0
        for n in sizes:
            out.append(flat[start: start + n])
            start += n
        return out
