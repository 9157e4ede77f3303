"""What an agency's adapter is made of: the kit an agency builds on, apart from the demo that uses it.

- :mod:`~adapters.runtime.request`: :class:`Request`, :data:`Handler`,
  :class:`Change`, and :class:`BusinessError` (the provider's own "no");
- :mod:`~adapters.runtime.adapter`: :class:`Adapter`, the runtime that serves
  one provider's handlers over Kafka (lookups at least once, writes exactly once);
- :mod:`~adapters.runtime.forward`: :class:`Forwarder`, the bounded HTTP client
  of an agency's own REST backend.
"""

from adapters.runtime.adapter import Adapter
from adapters.runtime.forward import Forwarder
from adapters.runtime.request import BusinessError, Change, Handler, Request

__all__ = ["Adapter", "BusinessError", "Change", "Forwarder", "Handler", "Request"]
