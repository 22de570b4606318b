"""data_fetch: getting chest X-rays onto disk, verified, with one validated manifest.

Every source (``synthetic``, ``nih``, ``covid19_ar``, ``chexpert``, ``mimic``) writes
PNG images plus a manifest in the schema of :mod:`data_fetch.manifest`. Nothing after the
manifest lives here: that is :mod:`cxrlab`.
"""
from data_fetch.manifest import (
    SCHEMA_VERSION,
    ManifestError,
    patient_level_split,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from data_fetch.paths import data_root, dataset_dir

__all__ = [
    "SCHEMA_VERSION",
    "ManifestError",
    "data_root",
    "dataset_dir",
    "patient_level_split",
    "read_manifest",
    "validate_manifest",
    "write_manifest",
]
