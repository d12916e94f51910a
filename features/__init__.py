"""The HDF5 feature store (schema in README.md): writers, readers, provenance checks and loaders."""
from vidfeat.features.store import (
    SCHEMA_VERSION,
    FeatureStore,
    ProvenanceMismatch,
    Rows,
    StoreError,
    StoreLocked,
    StoreWriter,
    VideoRecord,
    check_compatible,
    merge_stores,
    open_store,
    provenance_hash,
    write_store,
)
from vidfeat.features.loaders import SequenceSource, StorePath, fits_in_memory, load_xy, pool, select_keys

__all__ = [
    "SCHEMA_VERSION", "FeatureStore", "ProvenanceMismatch", "Rows", "StoreError", "StoreLocked", "StoreWriter",
    "VideoRecord", "check_compatible", "merge_stores", "open_store", "provenance_hash", "write_store",
    "SequenceSource", "StorePath", "fits_in_memory", "load_xy", "pool", "select_keys",
]
