"""What every command shares: exit codes, JSON output and the ingest summaries' notes."""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_RUNTIME_ERROR",
    "EXIT_STORE_FULL",
    "EXIT_STORE_OWNED",
    "EXIT_USAGE",
    "LABELS_KEPT",
    "MANIFEST_UNMATCHED",
    "print_json",
]

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 2  # a reconcile's deletions were refused by the guard (as a usage error)
EXIT_STORE_OWNED = 3  # another process owns the embedded store and serves no API to go through
EXIT_STORE_FULL = 4  # free disk below the store's reserve: writes refused, nothing lost
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (128 + SIGPIPE, as a shell reports it)

# What a run without the manifest (or path template) of an earlier one did to its labels.
LABELS_KEPT = (
    "objects keep the labels an earlier manifest or path template gave them: this run's "
    "rules say nothing about them (pass the same --manifest / --path-template to change them)"
)
MODALITY_CONFLICTS = (
    "DICOM objects are stored with the modality their manifest row, path template or object "
    "metadata gave, which is not their header's Modality (those rules take precedence)"
)
TEMPLATE_UNMATCHED = (
    "objects' keys do not have the path template's layout, and took no label from it: its parts "
    "are matched to the last folders of each key, so a key with fewer folders (or another literal "
    "part) misses it"
)
MANIFEST_UNMATCHED = (
    "manifest rows name no object of the source, and labelled nothing: a manifest's keys are "
    "the objects' paths relative to the folder or prefix ingested"
)


def print_json(obj: Any) -> None:
    """One JSON object on stdout, on one line."""
    print(json.dumps(obj, sort_keys=False))
