"""Image files: reading one (with truncation checks), its header, and whether image and mask share a grid.

Shared by ``radcluster cohort check`` and the extraction task, so both give the same reason
for the same file.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib

import numpy as np

from .. import _io
from ..errors import ScanError


def geometry_mismatch(image, mask, tolerance: float = 1e-6) -> str | None:
    """Why ``image`` and ``mask`` (SimpleITK images or readers) do not share a grid, or None.

    Follows ITK's own rule (the one pyradiomics' checks trip on): origins and spacings agree
    within ``tolerance`` times the image spacing, directions within ``tolerance``.
    """
    if tuple(image.GetSize()) != tuple(mask.GetSize()):
        return f"size differs: image {tuple(image.GetSize())}, mask {tuple(mask.GetSize())}"
    spacing = np.asarray(image.GetSpacing())
    scale = tolerance * float(spacing.min() if spacing.size else 1.0)
    if not np.allclose(spacing, mask.GetSpacing(), rtol=0, atol=scale):
        return f"spacing differs: image {tuple(image.GetSpacing())}, mask {tuple(mask.GetSpacing())}"
    if not np.allclose(image.GetOrigin(), mask.GetOrigin(), rtol=0, atol=scale):
        return f"origin differs: image {tuple(image.GetOrigin())}, mask {tuple(mask.GetOrigin())}"
    if not np.allclose(image.GetDirection(), mask.GetDirection(), rtol=0, atol=tolerance):
        return "direction differs between image and mask"
    return None


def read_image(case_id: str, path: str, role: str, *, header_only: bool = False):
    """The SimpleITK image at ``path``, or with ``header_only`` a reader holding its header.

    Shared by :func:`check_cohort` and the extraction task, so both give the same reason for
    the same file. Besides what SimpleITK rejects, a file that SimpleITK reads without
    complaint but that is cut short is rejected: a truncated gzip stream or NIfTI file (ITK's
    NIfTI reader fills the missing voxels with zeros).

    Raises
    ------
    ScanError
        Stage ``read``, naming the case, the file and why it cannot be used.
    """
    import SimpleITK as sitk

    def unusable(reason: str) -> ScanError:
        return ScanError(case_id, "read", reason, file=path)

    if not _io.exists(path):
        raise unusable(f"{role} file does not exist")
    with _io.local_file(path) as local:
        reader = sitk.ImageFileReader()
        reader.SetFileName(local)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise unusable(f"{role} is not a readable image ({itk_error_reason(err)})") from err
        conflict = nifti_transform_conflict(local, reader) if local.lower().endswith((".nii", ".nii.gz")) else None
        if conflict:
            raise unusable(f"{role}: {conflict}")
        if header_only:
            return reader
        from ..extract.readers.fastread import read_gzip_voxels

        # a gzip NIfTI inflated faster; anything else (NRRD: ITK's own reader is as fast),
        # or a damaged file, is read and judged by SimpleITK below
        image = read_gzip_voxels(local, reader)
        if image is not None:
            return image
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise unusable(
                f"{role} is not a readable image: its header reads but its voxel data does not "
                f"(truncated or corrupt file; {itk_error_reason(err)})"
            ) from err
        short = _cut_short(local)
        if short:
            raise unusable(f"{role} file is truncated or corrupt: {short}")
    return image


_XFORM_CODES = {1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}
# qform and sform are stored as float32 (the qform as a quaternion): a file written from one
# affine differs by ~1e-5 between them; beyond these they describe different positions.
_XFORM_MM = 1e-3
_XFORM_COSINE = 1e-4


def nifti_transform_conflict(local: str, image) -> str | None:
    """Why a NIfTI file's qform and sform disagree (and which one SimpleITK used), or None.

    ``image`` is the SimpleITK image or reader of the file. Both transforms must be set
    (non-zero codes) to disagree; the message gives how far apart the origins and the axes
    are, so a user can tell a rounding quirk from a different position.
    """
    import nibabel

    try:
        header = nibabel.load(local).header
    except Exception:  # nibabel raises many types for files it cannot parse; ITK read it
        return None
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if not qcode or not scode or qform is None or sform is None:
        return None
    lps = np.diag([-1.0, -1.0, 1.0])  # NIfTI is RAS, ITK LPS
    forms = {"qform": lps @ np.asarray(qform)[:3], "sform": lps @ np.asarray(sform)[:3]}
    q, s = forms["qform"], forms["sform"]
    shift = float(np.abs(q[:, 3] - s[:, 3]).max())
    qaxes, saxes = q[:, :3] / np.linalg.norm(q[:, :3], axis=0), s[:, :3] / np.linalg.norm(s[:, :3], axis=0)
    cosines = np.clip(np.sum(qaxes * saxes, axis=0), -1, 1)
    scale = float(np.abs(np.linalg.norm(q[:, :3], axis=0) / np.linalg.norm(s[:, :3], axis=0) - 1).max())
    if shift <= _XFORM_MM and float((1 - cosines).max()) <= _XFORM_COSINE and scale <= _XFORM_COSINE:
        return None
    origin = np.asarray(image.GetOrigin())[:3]
    used = min(forms, key=lambda k: float(np.abs(forms[k][:, 3][: origin.size] - origin).max()))
    degrees = float(np.degrees(np.arccos(cosines)).max())
    return (
        f"the NIfTI qform (code {int(qcode)}, {_XFORM_CODES.get(int(qcode), '?')}) and sform (code {int(scode)}, "
        f"{_XFORM_CODES.get(int(scode), '?')}) disagree: origins {shift:.3f} mm apart, axes up to {degrees:.2f} "
        f"degrees, spacings up to {100 * scale:.2f}%; SimpleITK used the {used}. Make them agree (or set the "
        "wrong one's code to 0) before extracting"
    )


def reorientation(image, mask, tolerance: float = 1e-4) -> str | None:
    """How ``mask``'s index axes are flipped or permuted relative to ``image``'s on the same grid, or None.

    None also when the grids differ otherwise (other voxel centres or extent): then the mask
    cannot be put on the image's grid without interpolation. A result such as ``"x flipped"``
    or ``"axes (y, x, z)"`` means nearest-neighbour resampling onto the image grid moves each
    mask voxel onto exactly one image voxel.
    """
    if image.GetDimension() != mask.GetDimension():
        return None
    dim = image.GetDimension()
    di = np.array(image.GetDirection()).reshape(dim, dim) * np.array(image.GetSpacing())
    dm = np.array(mask.GetDirection()).reshape(dim, dim) * np.array(mask.GetSpacing())
    try:
        a = np.linalg.solve(dm, di)  # image index step -> mask index step
        b = np.linalg.solve(dm, np.array(image.GetOrigin()) - np.array(mask.GetOrigin()))
    except np.linalg.LinAlgError:
        return None
    r = np.round(a)
    if np.abs(a - r).max() > tolerance or np.abs(b - np.round(b)).max() > tolerance:
        return None
    if not all(sorted(np.abs(r[i]).tolist()) == [0.0] * (dim - 1) + [1.0] for i in range(dim)):
        return None
    ends = [r @ np.array(c, dtype=float) + np.round(b) for c in (np.zeros(dim), np.array(image.GetSize()) - 1)]
    low, high = np.minimum(*ends), np.maximum(*ends)
    if (low != 0).any() or (high != np.array(mask.GetSize()) - 1).any() or np.array_equal(r, np.eye(dim)):
        return None
    axes = "xyz"[:dim]
    order = [axes[int(np.flatnonzero(r[:, i])[0])] for i in range(dim)]
    flipped = [axes[i] for i in range(dim) if r[:, i].sum() < 0]
    parts = []
    if order != list(axes):
        parts.append(f"axes ({', '.join(order)})")
    if flipped:
        parts.append(f"{', '.join(flipped)} flipped")
    return " and ".join(parts)


def _cut_short(local: str) -> str | None:
    """Why a gzip or NIfTI file is incomplete, or None.

    A gzip file's trailer records its inflated size: when that is the size the NIfTI header
    describes, the file is whole and nothing more is read. Otherwise (another gzip file, or
    a trailer that disagrees) the stream is inflated to its end to find where it breaks.
    """
    if not local.lower().endswith((".gz", ".nii")):
        return None
    gz = False
    try:
        with open(local, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            head = (gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw).read(540)
            needed = _nifti_bytes(head)
            if not gz:
                have = os.fstat(raw.fileno()).st_size
            else:
                raw.seek(-4, os.SEEK_END)
                if needed is not None and int.from_bytes(raw.read(4), "little") == needed % 2**32:
                    return None
                raw.seek(0)
                stream, have = gzip.GzipFile(fileobj=raw, mode="rb"), 0
                while chunk := stream.read(1 << 22):
                    have += len(chunk)
    except EOFError:
        return "the gzip stream ends before its end marker (the file was cut short)"
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        return f"the gzip stream is corrupt ({err})" if gz else f"it cannot be read back ({err})"
    if needed is not None and have < needed:
        return f"its NIfTI header describes {needed} bytes of header and voxels, the file holds {have}"
    return None


def _nifti_bytes(head: bytes) -> int | None:
    """Bytes a single-file NIfTI-1 or NIfTI-2 image needs, from its header; None if not one."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(f"{order}8h", head[40:56])
            bitpix = struct.unpack(f"{order}h", head[72:74])[0]
            offset = int(struct.unpack(f"{order}f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(f"{order}i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            bitpix = struct.unpack(f"{order}h", head[14:16])[0]
            dims = struct.unpack(f"{order}8q", head[16:80])
            offset = struct.unpack(f"{order}q", head[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    return offset + math.prod(max(int(d), 1) for d in dims[1 : dims[0] + 1]) * bitpix // 8


def components(image) -> int:
    """Components per voxel of a SimpleITK image or of an image file reader."""
    if hasattr(image, "GetNumberOfComponentsPerPixel"):
        return image.GetNumberOfComponentsPerPixel()
    return image.GetNumberOfComponents()


def itk_error_reason(err: BaseException) -> str:
    """The reason in an ITK/SimpleITK error, without its source-file preamble and object address.

    NRRD errors carry their cause on the last line (``expected 226800 bytes but received
    5856``); it is appended.
    """
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = next((ln.split("ERROR:", 1)[1].strip() for ln in lines if "ERROR:" in ln), None)
    if reason is None:
        rest = [ln for ln in lines if "Exception thrown in" not in ln]
        reason = rest[0] if rest else (text or type(err).__name__)
    reason = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", reason)
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]")]
    if nrrd:
        reason = f"{reason.rstrip(':')}: {nrrd[-1].removeprefix('[nrrd]').strip()}"
    return reason
