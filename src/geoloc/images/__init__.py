"""Image stores (folder, MessagePack shards, tar via offset index) and EXIF GPS from headers."""

from geoloc.images.archives import (
    INDEX_SCHEMA,
    MEMBER_SEPARATOR,
    ArchiveError,
    ImageStore,
    content_hash,
    index_shard,
    index_tar,
    load_tar_index_pickle,
)
from geoloc.images.exif import CORRUPT_IMAGE, GPS_PROBLEMS, ImageHeader, read_header
from geoloc.images.metadata import MetadataError, strip_metadata

__all__ = [
    "CORRUPT_IMAGE",
    "GPS_PROBLEMS",
    "INDEX_SCHEMA",
    "MEMBER_SEPARATOR",
    "ArchiveError",
    "ImageHeader",
    "ImageStore",
    "MetadataError",
    "content_hash",
    "index_shard",
    "index_tar",
    "load_tar_index_pickle",
    "read_header",
    "strip_metadata",
]
