"""MindGuard: flags the user turns of a mental-health chat that carry a *current*, clinically
actionable risk — self-harm or harm to others — judged in the context of the whole conversation.

Example:
    >>> import mindguard
    >>> guard = mindguard.load_guard("keyword")
    >>> conv = mindguard.Conversation.from_dicts("c", [{"role": "user", "content": "this job is killing me"}])
    >>> guard.assess_conversation(conv)[0].label
    'safe'
"""

from .conversation import Conversation, Message
from .errors import DataError, MindGuardError
from .guards import Assessment, Guard, load_guard
from .taxonomy import LABELS, TAXONOMY_VERSION, render_policy

__version__ = "0.1.0"

__all__ = ["Conversation", "Message", "DataError", "MindGuardError", "Assessment", "Guard", "load_guard",
           "LABELS", "TAXONOMY_VERSION", "render_policy", "__version__"]
