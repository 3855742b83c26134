"""Inputs shared by the reliability corpus: a small CT, labels on its grid, one Dask worker."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # corpus; bad_files, toy_models
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from corpus import Inputs, ct_array, labels_array, save_nifti  # noqa: E402


@pytest.fixture(scope="session")
def inputs_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    save_nifti(folder / "ct.nii.gz", ct_array())
    save_nifti(folder / "labels.nii.gz", labels_array())
    return folder


@pytest.fixture(scope="module")
def dask_scheduler():
    """One in-process worker thread for every batch case: no cluster start per case, and a case run as
    another user (``os.seteuid``) writes as that user in the worker too."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                           silence_logs=logging.ERROR)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture
def inputs(inputs_folder) -> Inputs:
    return Inputs(inputs_folder / "ct.nii.gz", inputs_folder / "labels.nii.gz")
