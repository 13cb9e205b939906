"""A PACS as a source, over DICOMweb (PS3.18): QIDO-RS lists, WADO-RS fetches.

Addressed as ``dicomweb+http(s)://HOST[:PORT]/PREFIX`` with optional selectors in the query string
(``?study=UID&study=UID&modality=CT&since=2024-01-01``; the command line's ``--study``,
``--modality`` and ``--since`` append them).

Keys stand for an instance's Study/Series/SOP Instance UIDs without showing them
(`InstanceKeys`: deterministic authenticated encryption under a key derived from the data dir's
hash key), so payloads, task arguments and logs never hold a UID, while any process with the same
settings (a Celery worker) fetches an instance from its key alone. The ETag equivalent is a keyed
hash of the SOP Instance UID and the instance's QIDO-RS attributes (a DICOM instance never
changes under its UID, so they stand for the bytes without downloading them at listing time).
Credentials come from `DicomwebSettings` and never appear in URIs, messages or logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from dicomweb_client.api import DICOMwebClient

from core.config import DICOMWEB_SCHEMES, DicomwebSettings, split_dicomweb_uri
from core.errors import BadInput, ConfigError, ObjectNotFound, SourceError, TooLarge
from ingest.sources.base import ObjectRef, Source, check_source_name
from ingest.sources.multipart import boundary_of, split_multipart

__all__ = [
    "DicomwebSelector",
    "DicomwebSource",
    "InstanceKeys",
    "is_dicomweb_uri",
    "parse_dicomweb_uri",
    "with_selectors",
    "with_since",
]

# dicomweb-client logs every UID it retrieves at INFO; radsearch's logs name keys only where needed.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

SCHEMES = DICOMWEB_SCHEMES
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")

# QIDO-RS attribute tags (hex keywords in the JSON answers).
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
# What the ETag equivalent hashes besides the SOP Instance UID: asked for explicitly, so a listing
# and a single look-up (`stat`) hash the same set.
_IDENTITY_FIELDS = ("SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames")
_IDENTITY_TAGS = ("00080016", "00200013", "00280010", "00280011", "00280008")
_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_KEY_PREFIX = "dw1-"
# UIDs are digits and dots: with "/" between the three, 4 bits a character.
_NIBBLES = "0123456789./"


class InstanceKeys:
    """Object keys of DICOM instances: the three UIDs packed (4 bits a character) and sealed with
    AES-SIV, deterministic (the same instance, the same key) and authenticated (a key that was
    not made here is refused), under a key derived from ``hash_key``."""

    def __init__(self, hash_key: bytes) -> None:
        derived = hmac.new(hash_key, b"radsearch dicomweb instance keys v1", hashlib.sha512).digest()
        self._siv = AESSIV(derived)

    def encode(self, study: str, series: str, sop: str) -> str:
        text = f"{study}/{series}/{sop}"
        if len(text) > 200 or any(c not in _NIBBLES for c in text):
            raise BadInput("instance", "not DICOM UIDs")
        nibbles = [_NIBBLES.index(c) for c in text]
        if len(nibbles) % 2:
            nibbles.append(15)
        packed = bytes(hi << 4 | lo for hi, lo in zip(nibbles[::2], nibbles[1::2], strict=True))
        sealed = self._siv.encrypt(packed, None)
        return _KEY_PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def decode(self, key: str) -> tuple[str, str, str]:
        """(Study, Series, SOP Instance UID) of a key; `BadInput` for anything not made here."""
        if not key.startswith(_KEY_PREFIX) or len(key) > 400:
            raise BadInput(key[:80], "not a DICOMweb instance key")
        body = key[len(_KEY_PREFIX) :]
        try:
            packed = self._siv.decrypt(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), None)
        except (InvalidTag, ValueError) as exc:
            raise BadInput(key[:80], "not a DICOMweb instance key (made under another hash key?)") from exc
        chars = []
        for byte in packed:
            for nibble in (byte >> 4, byte & 15):
                if nibble < len(_NIBBLES):
                    chars.append(_NIBBLES[nibble])
        parts = "".join(chars).split("/")
        if len(parts) != 3:
            raise BadInput(key[:80], "not a DICOMweb instance key")
        return parts[0], parts[1], parts[2]


def is_dicomweb_uri(uri: str) -> bool:
    return uri.startswith(SCHEMES)


@dataclass(frozen=True)
class DicomwebSelector:
    """Which instances a listing holds: some studies, a modality, studies since a date."""

    studies: tuple[str, ...] = ()
    modality: str | None = None
    since: str | None = None  # YYYYMMDD

    def query(self) -> str:
        parts = [f"study={uid}" for uid in self.studies]
        if self.modality:
            parts.append(f"modality={self.modality}")
        if self.since:
            parts.append(f"since={self.since}")
        return "&".join(parts)


@dataclass(frozen=True)
class DicomwebUri:
    """A parsed ``dicomweb+http(s)://`` URI: the DICOMweb base URL and the selector."""

    base_url: str
    selector: DicomwebSelector = field(default_factory=DicomwebSelector)


def _since(value: str) -> str:
    match = _DATE.match(value.strip())
    digits = "".join(match.groups()) if match else ""
    try:
        date.fromisoformat(digits)  # 2024-13-01 matches the pattern, is no date
    except ValueError:
        raise ConfigError("since must be a date YYYY-MM-DD") from None
    return digits


def parse_dicomweb_uri(uri: str) -> DicomwebUri:
    """``dicomweb+http://host:8042/dicom-web?modality=CT`` → base URL and selector; `ConfigError`
    naming the part that is wrong (never echoing credentials)."""
    parts = split_dicomweb_uri(uri)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"study", "modality", "since"}
    if unknown:
        raise ConfigError(f"unknown DICOMweb selector {sorted(unknown)[0]!r}; use study, modality, since")
    studies = tuple(query.get("study", []))
    for uid in studies:
        if len(uid) > 64 or not _UID.match(uid):
            raise ConfigError("study must be a DICOM UID (digits and dots, at most 64 characters)")
    for name in ("modality", "since"):  # one each: a second would be dropped, not combined
        if len(query.get(name, [])) > 1:
            raise ConfigError(f"{name} given {len(query[name])} times; a DICOMweb source takes one")
    modality: str | None = query["modality"][-1] if query.get("modality") else None
    if modality is not None:
        modality = modality.upper()
        if not _MODALITY.match(modality):
            raise ConfigError("modality must be a DICOM modality code such as CT or MR")
    since: str | None = query["since"][-1] if query.get("since") else None
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return DicomwebUri(base, DicomwebSelector(studies, modality, _since(since) if since else None))


def with_selectors(
    uri: str, *, studies: list[str] | None = None, modality: str | None = None, since: str | None = None
) -> str:
    """``uri`` with the command line's selectors appended to its query string."""
    extra = DicomwebSelector(tuple(studies or ()), modality, since).query()
    if not extra:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{extra}"


def with_since(uri: str, since: str) -> str:
    """``uri`` with its ``since`` selector moved on to ``since`` (a later poll's day), or left at
    the URI's own where that is later: one ``since``, never two."""
    parts = urlsplit(uri)
    own = parse_dicomweb_uri(uri).selector.since
    later = max(_since(since), own or "")
    query = [
        (name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "since"
    ]
    return urlunsplit(parts._replace(query=urlencode([*query, ("since", later)])))


def make_session(settings: DicomwebSettings) -> requests.Session:
    """A requests session carrying the configured credentials (basic or bearer)."""
    session = requests.Session()
    if settings.bearer_token is not None:
        session.headers["Authorization"] = f"Bearer {settings.bearer_token.get_secret_value()}"
    elif settings.username:
        password = settings.password.get_secret_value() if settings.password else ""
        session.auth = (settings.username, password)
    return session


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _default_name(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", parts.netloc)
    path = "/".join(p for p in (re.sub(r"[^A-Za-z0-9._-]", "-", s) for s in parts.path.split("/")) if p)
    return f"{host}/{path}" if path else host


class DicomwebSource(Source):
    """Instances of a DICOMweb server, listed study → series → instance page by page."""

    def __init__(
        self,
        uri: str,
        settings: DicomwebSettings,
        *,
        hash_key: bytes,
        max_object_bytes: int,
        name: str | None = None,
    ) -> None:
        parsed = parse_dicomweb_uri(uri)
        self.base_url = parsed.base_url
        self.selector = parsed.selector
        self.uri = f"dicomweb+{parsed.base_url}"
        self.name = check_source_name(
            name if name is not None else _default_name(parsed.base_url),
            field="source_name" if name is not None else "the DICOMweb server's name (give --source-name)",
        )
        self.max_object_bytes = max_object_bytes
        self.page_size = settings.page_size
        self.timeout_s = settings.timeout_s
        self.session = make_session(settings)
        self.client = DICOMwebClient(self.base_url, session=self.session, timeout=settings.timeout_s)
        self._fetch_slots = threading.BoundedSemaphore(settings.fetch_workers)
        self._hash_key = hash_key
        self.keys = InstanceKeys(hash_key)

    # -- QIDO-RS -----------------------------------------------------------------------------

    def _qido(self, what: str, call: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            try:
                page: list[dict[str, Any]] = call(limit=self.page_size, offset=offset, **kwargs)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                raise SourceError(f"QIDO-RS search for {what} at {self.uri} failed: HTTP {status}") from exc
            except requests.RequestException as exc:
                raise SourceError(
                    f"cannot reach the DICOMweb server {self.uri}: {type(exc).__name__}"
                ) from exc
            yield from page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def _studies(self) -> Iterator[str]:
        if self.selector.studies:
            yield from self.selector.studies
            return
        # The modality is matched at series level only: servers (Orthanc among them) may page
        # studies before matching ModalitiesInStudy, leaving short pages that end a listing early.
        filters: dict[str, Any] = {}
        if self.selector.since:
            filters["StudyDate"] = f"{self.selector.since}-"
        for item in self._qido("studies", self.client.search_for_studies, search_filters=filters):
            uid = _value(item, STUDY_UID)
            if uid:
                yield uid

    def _series(self, study: str) -> Iterator[str]:
        filters: dict[str, Any] = {}
        if self.selector.modality:
            filters["Modality"] = self.selector.modality
        for item in self._qido(
            "series", self.client.search_for_series, study_instance_uid=study, search_filters=filters
        ):
            uid = _value(item, SERIES_UID)
            if uid:
                yield uid

    def _ref(self, item: dict[str, Any], study: str, series: str) -> ObjectRef | None:
        sop = _value(item, SOP_UID)
        if not sop:
            return None
        identity = {tag: (item.get(tag) or {}).get("Value") for tag in _IDENTITY_TAGS}
        text = json.dumps([sop, identity], sort_keys=True).encode()
        etag = hmac.new(self._hash_key, text, hashlib.sha256).hexdigest()[:32]
        return ObjectRef(key=self.keys.encode(study, series, sop), etag=etag, size=0)

    def list(self) -> Iterator[ObjectRef]:
        for study in self._studies():
            for series in self._series(study):
                for item in self._qido(
                    "instances",
                    self.client.search_for_instances,
                    study_instance_uid=study,
                    series_instance_uid=series,
                    fields=list(_IDENTITY_FIELDS),
                ):
                    ref = self._ref(item, study, series)
                    if ref is not None:
                        yield ref

    def _instance(self, study: str, series: str | None, sop: str) -> tuple[ObjectRef, str, str] | None:
        """One instance by QIDO-RS, within a study and series when known; None if absent."""
        kwargs: dict[str, Any] = {"search_filters": {"SOPInstanceUID": sop}}
        if series is not None:
            kwargs.update(study_instance_uid=study, series_instance_uid=series)
        fields = ["StudyInstanceUID", "SeriesInstanceUID", *_IDENTITY_FIELDS]
        for item in self._qido("an instance", self.client.search_for_instances, fields=fields, **kwargs):
            found_study, found_series = _value(item, STUDY_UID), _value(item, SERIES_UID)
            found_study = found_study or (study if series is not None else None)
            found_series = found_series or series
            if found_study and found_series and _value(item, SOP_UID) == sop:
                ref = self._ref(item, found_study, found_series)
                if ref is not None:
                    return ref, found_study, found_series
        return None

    def stat(self, key: str) -> ObjectRef:
        study, series, sop = self.keys.decode(key)
        found = self._instance(study, series, sop)
        if found is None:
            raise ObjectNotFound(key)
        return found[0]

    def ref_for_uid(self, sop: str) -> ObjectRef | None:
        """The reference of the instance with SOP Instance UID ``sop`` (a global QIDO-RS look-up);
        None if the server does not hold it (or ``sop`` is no UID)."""
        if len(sop) > 64 or not _UID.match(sop):
            return None
        found = self._instance("", None, sop)
        return found[0] if found else None

    def locate(self, sop: str) -> tuple[str, str]:
        """The (Study, Series) Instance UIDs of the instance ``sop``, by QIDO-RS; `BadInput`
        (naming no UID) if the server does not hold it."""
        found = self._instance("", None, sop) if len(sop) <= 64 and _UID.match(sop) else None
        if found is None:
            raise ObjectNotFound("instance")
        return found[1], found[2]

    # -- WADO-RS -----------------------------------------------------------------------------

    def retrieve(self, study: str, series: str, sop: str, *, key: str | None = None) -> bytes:
        """One instance's Part 10 bytes as stored (any transfer syntax), by WADO-RS."""
        key = key or "instance"
        url = f"{self.base_url}/studies/{study}/series/{series}/instances/{sop}"
        with self._fetch_slots:
            try:
                response = self.session.get(
                    url, headers={"Accept": _WADO_ACCEPT}, timeout=self.timeout_s, stream=True
                )
            except requests.RequestException as exc:
                raise SourceError(
                    f"cannot reach the DICOMweb server {self.uri}: {type(exc).__name__}"
                ) from exc
            with response:
                if response.status_code == 404:
                    raise ObjectNotFound(key)
                if response.status_code >= 400:
                    raise SourceError(
                        f"WADO-RS retrieval from {self.uri} failed: HTTP {response.status_code}"
                    )
                length = int(response.headers.get("Content-Length") or 0)
                if length > self.max_object_bytes + 64 * 1024:
                    raise TooLarge(key, f"object exceeds the {self.max_object_bytes}-byte limit")
                body = bytearray()
                try:
                    for chunk in response.iter_content(1 << 20):
                        body += chunk
                        if len(body) > self.max_object_bytes + 64 * 1024:
                            raise TooLarge(key, f"object exceeds the {self.max_object_bytes}-byte limit")
                except requests.RequestException as exc:
                    raise SourceError(f"WADO-RS retrieval from {self.uri} broke off") from exc
                content_type = response.headers.get("Content-Type", "")
        try:
            parts = list(split_multipart(bytes(body), boundary_of(content_type)))
        except ConfigError as exc:
            raise BadInput(key, "WADO-RS answer is not multipart/related") from exc
        if not parts:
            raise BadInput(key, "WADO-RS answer holds no instance")
        data = parts[0][1]
        if len(data) > self.max_object_bytes:
            raise TooLarge(key, f"object of {len(data)} bytes exceeds the {self.max_object_bytes}-byte limit")
        return data

    def fetch(self, key: str) -> bytes:
        study, series, sop = self.keys.decode(key)
        return self.retrieve(study, series, sop, key=key)

    def close(self) -> None:
        self.session.close()
