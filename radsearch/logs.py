"""Log set-up for every radsearch process: text for a terminal, or one JSON object per line
(``RADSEARCH_LOG_FORMAT=json``) for a log collector; both carry the request id."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from core.request_context import RequestIdFilter

__all__ = ["JsonFormatter", "configure_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id"[, "exc"]}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(verbosity: int, log_format: str) -> None:
    """Root handler on stderr: WARNING, INFO (``-v``) or DEBUG (``-vv``), text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=logging.WARNING - 10 * min(verbosity, 2), handlers=[handler], force=True)
