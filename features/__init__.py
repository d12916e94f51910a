"""The HDF5 feature store (schema in README.md): writers, readers, provenance checks and loaders."""
from vidfeat.features.store import (
    SCHEMA_VERSION,
    CommittedKeys,
    DiskFull,
    FeatureStore,
    Rows,
    StoreError,
    StoreLocked,
    StoreWriter,
    StoredVideos,
    VideoRecord,
    merge_stores,
    open_store,
    Verification,
    shard_paths,
    verify_store,
    write_store,
)
from vidfeat.features.errors import UserError
from vidfeat.features.provenance import ProvenanceMismatch, check_compatible, check_representation, provenance_hash
from vidfeat.features.loaders import SequenceSource, StorePath, fits_in_memory, load_xy, pool, select_keys

__all__ = [
    "SCHEMA_VERSION", "CommittedKeys", "DiskFull", "FeatureStore", "ProvenanceMismatch", "Rows", "StoreError",
    "StoreLocked", "StoreWriter", "StoredVideos", "VideoRecord", "check_compatible", "merge_stores", "open_store",
    "provenance_hash", "shard_paths", "write_store", "Verification", "verify_store",
    "SequenceSource", "StorePath", "fits_in_memory", "load_xy", "pool", "select_keys",
    "UserError", "check_representation",
]
