"""The exception tree of radsearch. Library code raises these; only the API edge maps them to HTTP.

    RadsearchError
    ├── ConfigError
    │   └── DeletionRefused    (a prune/reconcile would delete too much; ``--force`` to go on)
    ├── EncoderError
    │   ├── EncoderNotFound
    │   ├── WeightsUnavailable
    │   └── NoTextTower
    ├── SourceError            (a source cannot be reached; transient, retried)
    │   ├── ServerUnavailable  (the radsearch server, e.g. the store's owner, cannot be reached)
    │   └── UpstreamUnreachable (a service radsearch needs, e.g. the S3 endpoint of model weights)
    ├── IndexStoreError
    │   ├── CollectionNotFound
    │   ├── CollectionExists
    │   ├── PointNotFound
    │   ├── InvalidVector
    │   ├── InvalidFilter
    │   ├── StoreOwned         (another process owns the embedded store's data dir)
    │   ├── StoreUnavailable   (the store's process ended; a new one is being started)
    │   └── StoreFull          (free disk below the reserve: writes refused, nothing lost)
    └── BadInput               (one input file/object cannot be used; the batch goes on)
        ├── ObjectNotFound      (the source has no such object, or no longer)
        ├── DecodeError         (corrupt, truncated, not an image)
        │   └── DecodeTimeout   (decoding ran past the per-file time limit)
        ├── UnsupportedFormat   (unknown container or transfer syntax without a decoder)
        └── TooLarge            (declared size beyond the configured limits)

Messages name the file or field at fault and never carry patient-identifying values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AccessRefused",
    "field_names",
    "os_reason",
    "rule_broken",
    "BadInput",
    "CollectionExists",
    "CollectionNotFound",
    "ConfigError",
    "DeletionRefused",
    "DecodeError",
    "DecodeTimeout",
    "EncoderError",
    "EncoderNotFound",
    "IndexStoreError",
    "InvalidFilter",
    "InvalidVector",
    "NoTextTower",
    "ObjectNotFound",
    "OwnerLike",
    "PointNotFound",
    "RadsearchError",
    "ServerUnavailable",
    "SourceError",
    "StoreDamaged",
    "StoreFull",
    "StoreOwned",
    "StoreUnavailable",
    "TooLarge",
    "UnsupportedFormat",
    "UpstreamUnreachable",
    "WeightsUnavailable",
]


def field_names(errors: Iterable[Mapping[str, Any]]) -> str:
    """The dotted names of the fields a validation's ``errors`` (pydantic's ``exc.errors()``) are
    about, sorted and comma-separated: what is wrong where, never the values."""
    return ", ".join(sorted({".".join(map(str, error.get("loc", ()))) or "?" for error in errors}))


def rule_broken(error: Mapping[str, Any]) -> str:
    """What one validation error (of pydantic's ``exc.errors()``) says is wrong: its message, our
    own validators' words without pydantic's "Value error, " in front; never the value."""
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ") if error.get("type") == "value_error" else message


def os_reason(exc: BaseException, otherwise: str) -> str:
    """What the OS said of ``exc`` ("No such file or directory"), else ``otherwise``: for a message
    that names the file itself and echoes nothing read from it."""
    return getattr(exc, "strerror", None) or otherwise


class RadsearchError(Exception):
    """Base of every error radsearch raises on purpose."""


class ConfigError(RadsearchError):
    """Settings or arguments that cannot work together."""


class EvalInputError(ConfigError):
    """Evaluation inputs that cannot work: empty splits, bad CSV schema, missing columns or files
    (here, not in `evaluation`, so that the command line can refuse its options without NumPy)."""


class AccessRefused(ConfigError):
    """A radsearch server refused a request for its API key (401 or 403); ``detail`` is the
    server's own reason. Raised by its clients, never by the API."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class DeletionRefused(ConfigError):
    """A prune or reconcile would delete the points of an empty listing's collection, or more than
    the allowed fraction of a collection's objects (HTTP 409, CLI exit 2); nothing was deleted.
    The message names the numbers; ``--force`` (``"force": true``) goes on anyway."""


class EncoderError(RadsearchError):
    pass


class EncoderNotFound(EncoderError):
    pass


class WeightsUnavailable(EncoderError):
    """The encoder's weights cannot be found or fetched; the message says how to provide them."""


class NoTextTower(EncoderError):
    pass


class SourceError(RadsearchError):
    """A source (S3 endpoint, folder) cannot be listed or read right now; worth retrying."""


class ServerUnavailable(SourceError):
    """A radsearch server (the store's owner, or ``--url``) cannot be reached right now."""


class ServerGone(ServerUnavailable):
    """The data dir's serving owner, which a command was sent to, stopped before it answered
    anything: nothing was done there, and the store is free for the command to run where it is."""


class UpstreamUnreachable(SourceError):
    """A service radsearch depends on (the S3 endpoint holding model weights) does not answer;
    the message names the endpoint. Not the caller's fault, and worth retrying later."""


class IndexStoreError(RadsearchError):
    pass


class CollectionNotFound(IndexStoreError):
    pass


class StoreDamaged(IndexStoreError):
    """A record of the store cannot be read: a collection's own (``collection.json``: its config
    and catalog entry; its points are untouched, and it can be dropped), the aliases file, a
    snapshot's manifest, a trash entry's record, the owner's job store. The message names the
    record and why, and what to do; never what the file holds."""


class CollectionExists(IndexStoreError):
    pass


class PointNotFound(IndexStoreError):
    pass


class InvalidVector(IndexStoreError):
    """A vector the store cannot take (wrong dimension, NaN or Inf, zero norm); ``field`` names the
    request field it came in, where the caller knows it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidFilter(IndexStoreError):
    pass


class StoreUnavailable(IndexStoreError):
    """The process that runs the embedded store ended (killed, out of memory); the server is
    starting a new one. Not the caller's fault, and worth retrying in a few seconds."""


class OwnerLike(Protocol):
    """What `StoreOwned` says of a data dir's owner (`core.ownership.OwnerRecord` is one)."""

    @property
    def pid(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def url(self) -> str | None: ...

    def describe(self) -> str: ...


class StoreOwned(IndexStoreError):
    """The embedded store's data dir belongs to another process, which is not disturbed.

    ``owner`` says which (pid, kind, URL); a serving owner is reached over HTTP instead."""

    def __init__(self, directory: Path, owner: OwnerLike) -> None:
        if owner.url:
            hint = (
                f"it serves this store at {owner.url}: radsearch commands go through it by themselves "
                f"(or with --url {owner.url}); stop it (kill {owner.pid}) to open the store here"
            )
        elif owner.kind in ("serve", "demo"):
            hint = "stop it, or let it finish starting and run the command again"
        else:
            hint = f"wait for it to finish (or stop it: kill {owner.pid}), then run the command again"
        super().__init__(f"the store in {directory} is in use by {owner.describe()}; {hint}")
        self.directory = directory
        self.owner = owner


class StoreFull(IndexStoreError):
    """Free disk space under the store is below the configured reserve: writes are refused before
    the engine runs out of space; what is stored is untouched, and writes work again once space
    is freed."""


class BadInput(RadsearchError):
    """One object cannot be decoded or used. ``key`` names it (an object key, never PHI)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ObjectNotFound(BadInput):
    """The source has no object under ``key`` (never had, or it was deleted since it was listed)."""

    def __init__(self, key: str) -> None:
        super().__init__(key, "object not found")


class DecodeError(BadInput):
    pass


class DecodeTimeout(DecodeError):
    """Decoding one object took longer than ``DecodeLimits.timeout_s``."""


class UnsupportedFormat(BadInput):
    pass


class TooLarge(BadInput):
    pass
