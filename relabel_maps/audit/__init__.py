"""Audit a dataset's labels with its label maps: likely mislabelled images, multi-object images,
labels that are not visible, the classes the teacher confuses, and an HTML report to look at them.

    from relabel_maps.audit import audit
    result = audit("maps/", "imagenet/train", "audit/")      # ImageFolder labels; writes audit/report.html
    result.summary["counts"]                                  # images, mislabelled, multi_object, ...

A face over the core: numpy for the evidence; pyarrow (Parquet table), Pillow (report thumbnails),
cleanlab (comparison) and timm (ImageNet WordNet ids) are imported when used
(``pip install 'relabel-maps[audit]'``).
"""

from .classes import ClassStats
from .compare import Comparison, compare_with_cleanlab
from .evidence import DEFAULT_TOP, Evidence, compute_evidence, local_fill
from .flags import FLAG_NAMES, DataStats, Flags, Resolved, Thresholds, flag
from .gallery import GalleryItem
from .labels import (
    NO_LABEL,
    UNKNOWN_LABEL,
    ClassResolver,
    DatasetLabels,
    FolderLabels,
    TableLabels,
    load_labels,
)
from .report import render_html, write_report
from .run import AuditResult, audit

__all__ = [
    "audit",
    "AuditResult",
    "Thresholds",
    "Resolved",
    "DataStats",
    "Flags",
    "flag",
    "FLAG_NAMES",
    "Evidence",
    "compute_evidence",
    "local_fill",
    "DEFAULT_TOP",
    "ClassStats",
    "Comparison",
    "compare_with_cleanlab",
    "GalleryItem",
    "render_html",
    "write_report",
    "ClassResolver",
    "DatasetLabels",
    "FolderLabels",
    "TableLabels",
    "load_labels",
    "NO_LABEL",
    "UNKNOWN_LABEL",
]
