"""Where objects come from: a local folder or an S3 bucket, addressed by a source URI."""

from ingest.sources.base import ObjectRef, Source
from ingest.sources.factory import open_source

__all__ = ["ObjectRef", "Source", "open_source"]
