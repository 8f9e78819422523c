"""Readers: a scan's files -> image + masks on one grid.

One module per input kind (SimpleITK-readable files, a DICOM series with RTSTRUCT or SEG, ...).
A reader takes a :class:`radcluster.cohort.Scan` and returns SimpleITK images on one grid, or
raises :class:`radcluster.errors.ScanError` naming the case, the file and the reason; it knows
nothing of Dask or of the store.
"""
