"""Where objects come from: a folder, an S3 bucket or a PACS over DICOMweb, addressed by a source URI."""

from ingest.sources.base import ObjectRef, Source
from ingest.sources.factory import load_manifest_ref, manifest_keys, open_source

__all__ = ["ObjectRef", "Source", "load_manifest_ref", "manifest_keys", "open_source"]
