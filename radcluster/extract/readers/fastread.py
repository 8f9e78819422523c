"""gzip-compressed NIfTI-1 voxels inflated by ISA-L, geometry from SimpleITK's header read.

Inflating the gzip stream is most of reading a compressed NIfTI CT; ISA-L's inflate (the
``isal`` bindings, picked over ``zlib-ng`` because it was faster on every sample case) does it
in 75-90% of the time ITK's NIfTI reader takes for the whole read. Only the voxel bytes are
read here: the image's size, pixel type, spacing, origin and direction are the ones
SimpleITK's ``ReadImageInformation`` already gave the caller, so the geometry is ITK's by
construction, and the voxels are the same bytes ITK would decode (the tests compare both with
``sitk.ReadImage``).

gzip NRRD is left to SimpleITK: ITK's NRRD reader inflates as fast as ISA-L on CT data and
4-5x faster on label maps (long runs of zeros), and this path adds a copy into the SimpleITK
image (the sample cases' ten NRRD files, CPU ms: SimpleITK 224, this path 286;
benchmarks/README.md, 2026-12-02). Anything else this module does not recognise with
certainty (raw or other encodings, NIfTI scaling, multi-component pixels, a type or byte count
that disagrees with the header) returns None, and the caller reads the file with SimpleITK,
so its error messages for a damaged file are unchanged too.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["read_gzip_voxels"]

# SimpleITK pixel ID name -> numpy dtype (without byte order)
_DTYPES = {
    "sitkUInt8": "u1",
    "sitkInt8": "i1",
    "sitkUInt16": "u2",
    "sitkInt16": "i2",
    "sitkUInt32": "u4",
    "sitkInt32": "i4",
    "sitkUInt64": "u8",
    "sitkInt64": "i8",
    "sitkFloat32": "f4",
    "sitkFloat64": "f8",
}
# NIfTI datatype codes (nifti1.h) -> numpy dtype
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_GZIP = 31  # zlib wbits for a gzip header and trailer (CRC and length checked)


def read_gzip_voxels(path: str, reader):
    """The image at local ``path`` as ``reader.Execute()`` would return it, or None.

    Parameters
    ----------
    path : str
        A local file; only a ``.nii.gz`` is read here.
    reader : SimpleITK.ImageFileReader
        The reader of ``path`` after ``ReadImageInformation()``: size, pixel type and
        geometry are taken from it.

    Returns
    -------
    SimpleITK.Image or None
        None when the file is not a gzip-compressed scalar NIfTI-1 image this module reads
        with certainty; the caller then reads it with SimpleITK.
    """
    if not path.lower().endswith(".nii.gz"):
        return None
    import SimpleITK as sitk
    from isal import isal_zlib

    dtype = next((d for name, d in _DTYPES.items() if getattr(sitk, name) == reader.GetPixelID()), None)
    if dtype is None or reader.GetNumberOfComponents() != 1:
        return None
    size = reader.GetSize()
    count = int(np.prod(size, dtype=np.int64))
    with open(path, "rb") as f:
        raw = f.read()
    try:
        voxels = _nifti(raw, dtype, count, isal_zlib)
    except (isal_zlib.error, struct.error, ValueError):
        return None  # damaged or unexpected: SimpleITK reads it and says why
    if voxels is None:
        return None
    image = sitk.GetImageFromArray(voxels.reshape(size[::-1]))
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def _nifti(raw: bytes, dtype: str, count: int, inflate) -> np.ndarray | None:
    """The voxels of a gzip-compressed single-file NIfTI-1 image of ``dtype``, unscaled.

    (SimpleITK reads no NIfTI-2 header, so none gets this far.)
    """
    data = inflate.decompress(raw, _GZIP)
    order = next((o for o in "<>" if struct.unpack(f"{o}i", data[:4])[0] == 348), None)
    if order is None or data[344:347] != b"n+1":
        return None
    (code,) = struct.unpack(f"{order}h", data[70:72])
    offset, slope, inter = struct.unpack(f"{order}3f", data[108:120])
    # ITK applies scl_slope/scl_inter (and changes the pixel type) unless they are the identity
    if _NIFTI_TYPES.get(code) != dtype or slope not in (0.0, 1.0) or inter != 0.0:
        return None
    offset = int(offset)
    if offset < 348 or len(data) < offset + count * int(dtype[1]):
        return None
    return np.frombuffer(data, dtype=order + dtype, count=count, offset=offset)
