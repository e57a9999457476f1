"""Guards: one `Guard` interface, many backends, created by name.

`load_guard("keyword")`, `load_guard("encoder:operating_point=tpr95")`, … Every backend is
interchangeable in the evaluator, the CLI, the server and red teaming.
"""

from ._base import Assessment, BaseGuard, Evidence, Guard, GuardSession, make_assessment
from ._registry import DEFAULT_GUARD, guard_names, load_guard, parse_guard_spec, register_guard

__all__ = [
    "Assessment", "BaseGuard", "Evidence", "Guard", "GuardSession", "make_assessment",
    "DEFAULT_GUARD", "guard_names", "load_guard", "parse_guard_spec", "register_guard",
]
