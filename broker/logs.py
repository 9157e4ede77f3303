"""Logging for every part: one format, and Kafka's transient states kept quiet until they persist.

While Kafka settles (a new group's coordinator, a new partition's leader, a
topic's metadata), aiokafka logs ERROR lines for states it retries by
itself; a newcomer reads them as failure. :class:`TransientKafkaErrors`
holds such a line back while its kind has been seen for less than
``persist_s``; if it persists, one line a ``persist_s`` goes through, as a
WARNING that says for how long.
"""

from __future__ import annotations

import logging
import re
import time
import traceback

TRANSIENT = re.compile(
    r"GroupCoordinatorNotAvailable|NotCoordinatorForGroup|NotLeaderForPartition|LeaderNotAvailable"
    r"|not found in cluster metadata|Marking the coordinator dead|UnknownTopicOrPartition"
)
PERSIST_S = 30.0


class TransientKafkaErrors(logging.Filter):
    """Drops a transient Kafka state's lines until the state has lasted ``persist_s``."""

    def __init__(self, persist_s: float = PERSIST_S) -> None:
        super().__init__()
        self.persist_s = persist_s
        self._episodes: dict[str, tuple[float, float]] = {}
        """Kind → (first seen, last seen) of its current episode."""
        self._shown: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        found = TRANSIENT.search(message)
        if found is None:
            return True
        kind, now = found.group(0), time.monotonic()
        first, last = self._episodes.get(kind, (now, now))
        if now - last > self.persist_s:  # quiet for a while: a new episode
            first = now
        self._episodes[kind] = (first, now)
        if now - first < self.persist_s or now - self._shown.get(kind, -1e9) < self.persist_s:
            return False
        self._shown[kind] = now
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = f"{message} (for {now - first:.0f}s now)", ()
        return True


_CREDENTIAL = re.compile(
    r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key)(\s*[:=]\s*|'\s*,\s*')[^\\\r\n'\"]*"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with credentials (``Authorization: Bearer …`` and the like) replaced by ``[redacted]``."""
    return _BEARER.sub(r"\1 [redacted]", _CREDENTIAL.sub(r"\1\2[redacted]", text))


class RedactCredentials(logging.Filter):
    """aiohttp logs a request it cannot parse with the raw header line, a caller's key included:
    the message and its traceback go out redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = redact(message), ()
        return True


def redact_aiohttp() -> None:
    """Install :class:`RedactCredentials` on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactCredentials) for f in server.filters):
        server.addFilter(RedactCredentials())


def setup_logging(level: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """Configure the root logger of a part's process."""
    logging.basicConfig(level=level.upper(), format=fmt)
    quiet = TransientKafkaErrors()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
    redact_aiohttp()
    # aiokafka narrates every rebalance and coordinator look-up at INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
