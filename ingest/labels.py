"""Label rules: where modality, anatomy, pathology, dataset and split come from.

Precedence, per field: manifest > path template > object metadata > DICOM tags.
Labels are normalised once here: modality upper-case (DICOM codes), the others lower-case.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Subscription
from core.errors import ConfigError
from core.payload import LABEL_FIELDS
from core.s3 import S3Location, parse_s3_uri
from core.suggest import did_you_mean

__all__ = [
    "Labeler",
    "PathTemplate",
    "PathTemplateError",
    "check_subscription_templates",
    "load_manifest",
    "parse_manifest",
    "read_manifest",
]

_TEMPLATE_FIELDS = frozenset({*LABEL_FIELDS, "file", "_"})
_PATHOLOGY_SEPARATORS = re.compile(r"[|;]")


def _normalise(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "pathology":
        items = _PATHOLOGY_SEPARATORS.split(value) if isinstance(value, str) else list(value)
        labels = [str(v).strip().lower() for v in items if str(v).strip()]
        return labels or None
    text = str(value).strip()
    if not text:
        return None
    return text.upper() if name == "modality" else text.lower()


class PathTemplateError(ConfigError):
    """A path template that cannot be used; ``reason`` says why without the template itself."""

    def __init__(self, template: str, reason: str) -> None:
        super().__init__(f"path template {template!r}: {reason}")
        self.reason = reason


class PathTemplate:
    """A key layout such as ``{modality}/{anatomy}/{pathology}/{file}`` (RadImageNet's).

    Each ``{field}`` matches one path segment; ``{_}`` matches a segment and is ignored; literal text
    must match exactly. The template is matched against the end of the key, so a key with extra
    leading folders still matches.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        pattern = ""
        seen: set[str] = set()
        for literal, name in re.findall(r"([^{]*)(?:\{([^}]*)\})?", template):
            pattern += re.escape(literal)
            if not name:
                continue
            if name not in _TEMPLATE_FIELDS:
                raise PathTemplateError(
                    template,
                    f"unknown field {{{name}}}{did_you_mean(name, _TEMPLATE_FIELDS)}; "
                    f"allowed: {', '.join(sorted(_TEMPLATE_FIELDS))}",
                )
            if name == "_":
                pattern += r"[^/]+"
            elif name in seen:
                raise PathTemplateError(template, f"field {{{name}}} appears twice")
            else:
                seen.add(name)
                pattern += f"(?P<{name}>[^/]+)"
        last = template.rsplit("/", 1)[-1]
        if last.startswith("{") and last.endswith("}") and last[1:-1] in LABEL_FIELDS:
            # Keys name files: a label there would be each file's name, x.dcm, not a label.
            raise PathTemplateError(
                template,
                f"its last part {last} would take each file's name as its label: end the template "
                "with /{file} (or /{_})",
            )
        self._regex = re.compile(r"(?:^|/)" + pattern + r"$")

    def matches(self, key: str) -> bool:
        """Whether ``key`` has the template's layout (a key that has not gets no label from it)."""
        return self._regex.search(key) is not None

    def match(self, key: str) -> dict[str, Any]:
        found = self._regex.search(key)
        if found is None:
            return {}
        return {k: v for k, v in found.groupdict().items() if k in LABEL_FIELDS}


def check_subscription_templates(subscriptions: Sequence[Subscription]) -> None:
    """`ConfigError` naming the first bucket subscription (RADSEARCH_EVENTS__SUBSCRIPTIONS) whose
    path template is refused: at start-up, not at each event's batch."""
    for position, subscription in enumerate(subscriptions):
        if subscription.path_template:
            try:
                PathTemplate(subscription.path_template)
            except PathTemplateError as exc:  # its reason: the template is a setting's value
                variable = f"RADSEARCH_EVENTS__SUBSCRIPTIONS__{position}__PATH_TEMPLATE"
                raise ConfigError(f"invalid setting: {variable}: {exc.reason}") from None


def parse_manifest(text: str, *, name: str = "manifest") -> dict[str, dict[str, Any]]:
    """CSV (header with ``key`` and label columns) or JSONL (one object per line with ``key``).

    `ConfigError` naming the line for a column (or JSONL field) other than ``key`` and the label
    fields, for a key given twice, and for a CSV row longer than its header: a misspelt column
    would otherwise label nothing, and of two rows for one key one would count, without a word."""
    rows: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}

    def add(key: str, labels: dict[str, Any], lineno: int) -> None:
        if key in lines:
            raise ConfigError(f"{name} line {lineno}: key {key!r} was given on line {lines[key]} already")
        lines[key] = lineno
        rows[key] = labels

    stripped = text.lstrip()
    if stripped.startswith("{"):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name} line {lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                raise ConfigError(f"{name} line {lineno}: each line needs a string 'key'")
            _check_columns(row, f"{name} line {lineno}", "field")
            add(row["key"], {k: row.get(k) for k in LABEL_FIELDS if row.get(k) not in (None, "")}, lineno)
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "key" not in reader.fieldnames:
        raise ConfigError(f"{name}: CSV manifest needs a header with a 'key' column")
    header = [column for column in reader.fieldnames if column.strip()]
    _check_columns(header, f"{name} header", "column")
    if len(set(header)) < len(header):
        twice = sorted({column for column in header if header.count(column) > 1})
        raise ConfigError(f"{name} header: column {twice[0]!r} appears twice")
    for row in reader:
        past_header = row.pop(None, None)
        unnamed = [value for column, value in row.items() if not column.strip() and (value or "").strip()]
        if past_header or unnamed:
            raise ConfigError(f"{name} line {reader.line_num}: more values than the header has named columns")
        key = (row.get("key") or "").strip()
        if key:
            add(key, {k: row[k] for k in LABEL_FIELDS if row.get(k)}, reader.line_num)
    return rows


def _check_columns(names: Any, where: str, what: str) -> None:
    """`ConfigError` for a name among ``names`` that is neither ``key`` nor a label field."""
    allowed = ("key", *LABEL_FIELDS)
    for column in names:
        if column not in allowed:
            hint = did_you_mean(str(column), allowed)
            raise ConfigError(
                f"{where}: unknown {what} {str(column)[:40]!r}{hint}; a manifest has key and any of "
                f"{', '.join(LABEL_FIELDS)}"
            )


def load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Read a manifest file (CSV or JSONL) mapping object key → labels."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"manifest {path.name}: not UTF-8 text (a CSV or JSONL file)") from None
    return parse_manifest(text, name=path.name)


def read_manifest(ref: str, fetch_object: Callable[[S3Location], bytes]) -> dict[str, dict[str, Any]]:
    """A manifest from an ``s3://`` object URI (its bytes read by ``fetch_object``) or a local
    file. The errors name the manifest by its file name only, never the whole reference."""
    if not ref.startswith("s3://"):
        return load_manifest(Path(ref))
    location = parse_s3_uri(ref)
    if not location.key:
        raise ConfigError("the manifest URI names a bucket, not an object")
    data = fetch_object(location)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("the manifest is not UTF-8 text") from exc
    return parse_manifest(text, name=location.key.rsplit("/", 1)[-1])


@dataclass
class Labeler:
    """Merges the label sources of one object in the documented precedence."""

    manifest: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path_template: PathTemplate | None = None

    def rule_labels(self, key: str) -> dict[str, Any]:
        """What the label rules alone (manifest row, path template) say about ``key``: known
        without reading the object, so a re-ingest notices a corrected row of an unchanged image."""
        return {
            "manifest": dict(self.manifest.get(key, {})),
            "template": self.path_template.match(key) if self.path_template else {},
        }

    def misses_template(self, key: str) -> bool:
        """Whether a path template is given and ``key`` does not have its layout."""
        return self.path_template is not None and not self.path_template.matches(key)

    def has_rules_for(self, key: str) -> bool:
        """Whether the label rules say anything about ``key``: a manifest row (one whose labels are
        all empty clears them) or a path template that gives it a label. Rules that say nothing
        leave the labels earlier rules stored alone (`ingest.pipeline`)."""
        return key in self.manifest or bool(self.path_template and self.path_template.match(key))

    def labels(
        self,
        key: str,
        *,
        dicom_tags: Mapping[str, Any] | None = None,
        object_metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The labels of ``key``; fields no rule knows are left out."""
        layers = (
            self.manifest.get(key, {}),
            self.path_template.match(key) if self.path_template else {},
            object_metadata or {},
            dicom_tags or {},
        )
        merged: dict[str, Any] = {}
        for name in LABEL_FIELDS:
            for layer in layers:
                value = _normalise(name, layer.get(name))
                if value is not None:
                    merged[name] = value
                    break
        return merged
