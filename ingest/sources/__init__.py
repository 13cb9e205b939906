"""Where objects come from: a folder, an S3 bucket or a PACS over DICOMweb, addressed by a source URI."""

from ingest.sources.base import ObjectRef, Source
from ingest.sources.factory import manifest_keys, open_source

__all__ = ["ObjectRef", "Source", "manifest_keys", "open_source"]
