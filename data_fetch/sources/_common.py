"""Pieces every real source shares, re-exported from the modules that now hold them.

The code lives by concern in :mod:`~data_fetch.sources.cli` (options, destination, the
``run`` shim), :mod:`~data_fetch.sources.images` (decode, resize, save),
:mod:`~data_fetch.sources.labels` (findings, sex, race) and :mod:`~data_fetch.sources.dataset`
(checks, folder claim, splits, failures, the manifest). Import from those; this module keeps the
old names importable (``from data_fetch.sources import _common``) for code not moved yet.
"""
from __future__ import annotations

from data_fetch.sources.cli import (add_common_args, add_http_loopback_arg, env_default,
                                    resolve_dest, run_fetch, say)
from data_fetch.sources.dataset import (DEFAULT_NAME, DEFAULT_SIZE, FailureBudget,
                                        FolderConflictError, carve_val, check_common,
                                        claim_folder, empty_columns, finalize, log,
                                        split_patients, whole_patient_subset)
from data_fetch.sources.images import (MAX_MEMBER_BYTES, MAX_PIXELS, PNG_BYTES_PER_PIXEL,
                                       CorruptImageError, decode_image, estimate_disk,
                                       save_png, scale_to_uint8, square_resize, store_image,
                                       to_uint8)
from data_fetch.sources.labels import (CHEXPERT_LABELS, RACE_CLASSES, finding_column,
                                       is_hispanic, map_sex, race_class)

__all__ = [
    "CHEXPERT_LABELS", "DEFAULT_NAME", "DEFAULT_SIZE", "MAX_MEMBER_BYTES", "MAX_PIXELS",
    "PNG_BYTES_PER_PIXEL", "RACE_CLASSES", "CorruptImageError", "FailureBudget",
    "FolderConflictError", "add_common_args", "add_http_loopback_arg", "carve_val",
    "check_common", "claim_folder", "decode_image", "empty_columns", "env_default",
    "estimate_disk", "finalize", "finding_column", "is_hispanic", "log", "map_sex",
    "race_class", "resolve_dest", "run_fetch", "save_png", "say", "scale_to_uint8",
    "split_patients", "square_resize", "store_image", "to_uint8", "whole_patient_subset",
]
