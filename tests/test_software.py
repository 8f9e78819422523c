"""Tests of radcluster._software: the one lookup of versions, and the three ways it is written down."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import SimpleITK as sitk

import radcluster
from radcluster._software import software_versions


def test_versions_of_the_named_packages_in_order_and_absent_ones_left_out():
    found = software_versions("numpy", "no_such_package_radcluster", "SimpleITK", "pyradiomics")
    assert list(found) == ["radcluster", "numpy", "SimpleITK", "pyradiomics"]
    assert found["radcluster"] == radcluster.__version__
    assert found["numpy"] == np.__version__
    assert found["SimpleITK"] == sitk.Version_VersionString()
    # the value names the distribution installed (the bhklab fork here)
    assert found["pyradiomics"] == f"pyradiomics-bhklab {metadata.version('pyradiomics-bhklab')}"


def test_each_caller_writes_the_same_versions():
    from radcluster.extract._radiomics import versions
    from radcluster.ibsi.report import _versions as ibsi_versions
    from radcluster.jobs.train import _versions as model_versions

    found = software_versions("pyradiomics", "SimpleITK", "numpy", "scipy")
    assert versions() == {
        "radcluster_version": found["radcluster"],
        "pyradiomics_version": found["pyradiomics"],
        "simpleitk_version": found["SimpleITK"],
    }
    assert ibsi_versions() == (
        f"radcluster {found['radcluster']}, {found['pyradiomics']}, SimpleITK {found['SimpleITK']}, "
        f"numpy {found['numpy']}, scipy {found['scipy']}"
    )
    model = model_versions()
    assert model["numpy"] == found["numpy"] and model["radcluster"] == found["radcluster"]
    assert "xgboost" in model and "sklearn" in model
