"""Storage behind two interfaces: bytes (BlobStore) and metadata (MetadataStore).

The embedded defaults are the Rust filesystem blob store and SQLite; a scaled root will swap in
object-storage and PostgreSQL implementations of the same protocols.
"""

from connreg.storage.interfaces import (
    BlobStore,
    Change,
    ManifestRecord,
    MetadataStore,
    ParkedChange,
    Referrer,
    TagPrecondition,
    TagPreconditionFailed,
)

__all__ = ["BlobStore", "Change", "ManifestRecord", "MetadataStore", "ParkedChange", "Referrer",
           "TagPrecondition", "TagPreconditionFailed"]
