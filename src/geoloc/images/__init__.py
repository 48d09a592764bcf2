"""Image stores (folder, MessagePack shards, tar and zip via offset index), EXIF GPS from headers, photo discovery.

Every catalog uri is opened through a `RootFolder`: below its root, or refused.
"""

from geoloc.images.archives import (
    MEMBER_SEPARATOR,
    ImageStore,
    index_shard,
    index_tar,
    load_tar_index_pickle,
)
from geoloc.images.containment import OUTSIDE_ROOT, OutsideRootError, RootFolder
from geoloc.images.discovery import IMAGE_SUFFIXES, Photo, PhotoIdClash, find_photos, list_files
from geoloc.images.exif import CORRUPT_IMAGE, GPS_PROBLEMS, ImageHeader, read_header
from geoloc.images.index_rows import INDEX_SCHEMA, ArchiveError, content_hash
from geoloc.images.members import MemberLookup
from geoloc.images.metadata import MetadataError, strip_metadata
from geoloc.images.zips import index_zip

__all__ = [
    "CORRUPT_IMAGE",
    "GPS_PROBLEMS",
    "IMAGE_SUFFIXES",
    "INDEX_SCHEMA",
    "MEMBER_SEPARATOR",
    "OUTSIDE_ROOT",
    "ArchiveError",
    "ImageHeader",
    "ImageStore",
    "MemberLookup",
    "MetadataError",
    "OutsideRootError",
    "Photo",
    "PhotoIdClash",
    "RootFolder",
    "content_hash",
    "find_photos",
    "index_shard",
    "index_tar",
    "index_zip",
    "list_files",
    "load_tar_index_pickle",
    "read_header",
    "strip_metadata",
]
