"""gzip-compressed NRRD and NIfTI-1 voxels inflated by ISA-L, geometry from SimpleITK's header read.

Inflating the gzip payload is most of reading a CT (ITK's own inflate: ~70 ms of a 512 x 512
x 48 lung scan); ISA-L's inflate (the ``isal`` bindings, picked over ``zlib-ng`` because it
was faster on every sample case) does it in about 60% of that time. Only the voxel bytes are
read here: the image's size, pixel type, spacing, origin and direction are the ones
SimpleITK's ``ReadImageInformation`` already gave the caller, so the geometry is ITK's by
construction, and the voxels are the same bytes ITK would decode (the tests compare both with
``sitk.ReadImage`` on every sample file).

Anything this module does not recognise with certainty (raw or other encodings, detached
data files, skipped lines or bytes, NIfTI scaling, multi-component pixels, a type or byte
count that disagrees with the header) returns None, and the caller reads the file with
SimpleITK as before, so its error messages for a damaged file are unchanged too.
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
# NRRD "type:" spellings (the NRRD0004 format definition) -> numpy dtype
_NRRD_TYPES = {
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    **dict.fromkeys(
        ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
        "i8",
    ),
    "float": "f4",
    "double": "f8",
}
# NIfTI datatype codes (nifti1.h) -> numpy dtype
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_GZIP = 31  # zlib wbits for a gzip header and trailer (CRC and length checked)


def read_gzip_voxels(path: str, reader):
    """The image at local ``path`` as ``reader.Execute()`` would return it, or None.

    Parameters
    ----------
    path : str
        A local ``.nrrd`` or ``.nii.gz`` file.
    reader : SimpleITK.ImageFileReader
        The reader of ``path`` after ``ReadImageInformation()``: size, pixel type and
        geometry are taken from it.

    Returns
    -------
    SimpleITK.Image or None
        None when the file is not a gzip-encoded scalar NRRD or NIfTI image this module reads
        with certainty; the caller then reads it with SimpleITK.
    """
    import SimpleITK as sitk
    from isal import isal_zlib

    dtype = next((d for name, d in _DTYPES.items() if getattr(sitk, name) == reader.GetPixelID()), None)
    if dtype is None or reader.GetNumberOfComponents() != 1:
        return None
    size = reader.GetSize()
    count = int(np.prod(size, dtype=np.int64))
    lower = path.lower()
    if not lower.endswith((".nrrd", ".nii.gz")):
        return None
    with open(path, "rb") as f:
        raw = f.read()
    try:
        parse = _nrrd if lower.endswith(".nrrd") else _nifti
        voxels = parse(raw, dtype, count, isal_zlib)
    except (isal_zlib.error, struct.error, ValueError):
        return None  # damaged or unexpected: SimpleITK reads it and says why
    if voxels is None:
        return None
    image = sitk.GetImageFromArray(voxels.reshape(size[::-1]))
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def _nrrd(raw: bytes, dtype: str, count: int, inflate) -> np.ndarray | None:
    """The voxels of an attached-data, gzip-encoded NRRD whose type is ``dtype``."""
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD000") or end < 0:
        return None
    fields: dict[str, str] = {}
    for line in raw[:end].decode("latin-1").split("\n")[1:]:
        if line.startswith("#") or (":=" in line and ": " not in line.split(":=", 1)[0]):
            continue  # a comment, or a key/value pair (free text, not a field)
        key, sep, value = line.partition(": ")
        if not sep or line.endswith("\r"):
            return None
        fields[key.strip().lower()] = value.strip()
    if fields.get("encoding", "").lower() not in ("gzip", "gz"):
        return None
    if {"data file", "datafile"} & fields.keys():
        return None
    if any(fields.get(k, "0") != "0" for k in ("line skip", "lineskip", "byte skip", "byteskip")):
        return None
    if _NRRD_TYPES.get(fields.get("type", "").lower()) != dtype:
        return None
    order = {"little": "<", "big": ">"}.get(fields.get("endian", "little").lower())
    if order is None:
        return None
    data = inflate.decompress(raw[end + 2 :], _GZIP)
    if len(data) != count * int(dtype[1]):
        return None
    return np.frombuffer(data, dtype=order + dtype)


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
