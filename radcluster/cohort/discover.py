"""Discovering a manifest from a folder in one of the common file layouts (``radcluster cohort scan``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..errors import ManifestError

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff")


def _strip_suffix(name: str) -> tuple[str, str] | None:
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


_IMAGE_WORDS = ("image", "img", "scan", "ct", "mr", "pet", "t1", "t2")


_MASK_WORDS = ("label", "labels", "mask", "seg", "segmentation", "roi")


def scan_directory(root: str | os.PathLike) -> pd.DataFrame:
    """Build a manifest from a folder in one of the common layouts.

    Recognised layouts, tried in this order:

    * nnU-Net: ``imagesTr/<id>_0000.nii.gz`` with ``labelsTr/<id>.nii.gz`` (also ``imagesTs``/``labelsTs``);
    * pairs in one folder: ``<id>_image.*`` with ``<id>_label.*`` (or ``_mask``, ``_seg``);
    * one folder per case holding one image and one mask (named ``image*``/``mask*``,
      ``*label*``, ``*seg*``).

    Returns a DataFrame with ``case_id, image, mask`` (paths relative to ``root``), sorted by
    case id. Raises :class:`ManifestError` when nothing matches.
    """
    base = Path(root)
    if not base.is_dir():
        raise ManifestError(str(base), ["not a folder"])
    rows: list[tuple[str, str, str]] = []

    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if (base / images_dir).is_dir() and (base / labels_dir).is_dir():
            for img in sorted((base / images_dir).iterdir()):
                split = _strip_suffix(img.name)
                if split is None:
                    continue
                stem, suffix = split
                case = re.sub(r"_\d{4}$", "", stem)
                if stem != f"{case}_0000" and stem != case:
                    continue  # other modalities (_0001, ...) of a case already listed
                label = base / labels_dir / f"{case}{suffix}"
                if label.exists():
                    rows.append((case, str(img.relative_to(base)), str(label.relative_to(base))))

    if not rows:
        files = sorted(p.name for p in base.iterdir() if p.is_file())
        for name in files:
            split = _strip_suffix(name)
            if split is None:
                continue
            stem, suffix = split
            m = re.match(rf"(.+?)[_-]({'|'.join(_IMAGE_WORDS)})$", stem, re.IGNORECASE)
            if not m:
                continue
            case = m.group(1)
            for word in _MASK_WORDS:
                cand = [
                    n
                    for n in files
                    if n.lower() == f"{case}_{word}{suffix}".lower() or n.lower() == f"{case}-{word}{suffix}".lower()
                ]
                if cand:
                    rows.append((case, name, cand[0]))
                    break

    if not rows:
        for case_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            found = [p for p in case_dir.iterdir() if p.is_file() and _strip_suffix(p.name)]
            masks = [p for p in found if any(w in p.name.lower() for w in _MASK_WORDS)]
            images = [p for p in found if p not in masks]
            if len(images) == 1 and len(masks) == 1:
                rows.append((case_dir.name, str(images[0].relative_to(base)), str(masks[0].relative_to(base))))

    if not rows:
        raise ManifestError(
            str(base),
            [
                "no cases found: expected nnU-Net imagesTr/labelsTr, <id>_image.*/<id>_label.* pairs, "
                "or one folder per case with one image and one mask"
            ],
        )
    return pd.DataFrame(rows, columns=["case_id", "image", "mask"]).sort_values("case_id", ignore_index=True)
