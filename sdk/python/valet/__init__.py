"""Valet for Python: an agent client (declare, renew, delegate, action
tokens, approvals, tool-call reports, DPoP) and a verifier for tool servers
(JWKS, revocation feed, introspection fallback, action tokens)."""

from .canonical import args_hash, canonical_args
from .client import ACTION_HEADER, Client, Task, task
from .dpop import DPoPKey
from .errors import Unreachable, ValetError, VerifyError
from .verify import Claims, SSFStream, Verifier

__all__ = ["ACTION_HEADER", "Claims", "Client", "DPoPKey", "SSFStream", "Task", "Unreachable", "ValetError", "Verifier",
           "VerifyError", "args_hash", "canonical_args", "task"]
__version__ = "0.1.0"
