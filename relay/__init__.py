"""ahasend-relay: an SMTP server that forwards every message to AhaSend's HTTP API v2.

The public face: ``translate`` (the pure MIME → API payload translator) with its result
type ``Translated``, and ``PermanentError``, the root of the errors a retry cannot fix.
"""

__version__ = "0.1.0"

from relay.errors import PermanentError, TransientError
from relay.translate.message import Translated, translate

__all__ = ["PermanentError", "TransientError", "Translated", "__version__", "translate"]
