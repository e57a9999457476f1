"""LLM access through one seam (`ChatClient`); see `_client.py`."""

from ._client import ChatClient, ChatResult, ScriptedChatClient, TokenLogprob, Usage

__all__ = ["ChatClient", "ChatResult", "ScriptedChatClient", "TokenLogprob", "Usage"]
