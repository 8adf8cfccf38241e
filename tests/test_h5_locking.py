"""The corpus writer on filesystems without HDF5 file locking (Lustre, NFS: errno 37/524)."""

import errno
import os

import h5py
import pytest

from hpcrnn.config import load_config
from hpcrnn.data.build import run_preprocess
from hpcrnn.data.corpus import open_corpus
from tests.helpers import tiny_config

REAL_FILE = h5py.File


def lustre_file(path, mode="r", *args, locking=None, **kw):
    """h5py.File on a mount that refuses locks, as HDF5 reports it there."""
    if locking is not False and os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() != "FALSE":
        raise OSError(
            errno.ENOLCK,
            "Unable to synchronously create file (unable to lock file, errno = 37, "
            "error message = 'No locks available')",
        )
    if locking is None:
        return REAL_FILE(path, mode, *args, **kw)
    return REAL_FILE(path, mode, *args, locking=locking, **kw)


@pytest.fixture
def no_lock_env(monkeypatch):
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)


def test_preprocess_writes_where_locks_are_refused(tmp_path, tiny_corpus, monkeypatch, no_lock_env):
    monkeypatch.setattr(h5py, "File", lustre_file)
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    run_preprocess(cfg)
    c = open_corpus(cfg.h5_path)
    assert len(c.vocab) > 10 and len(c.tokens()) > 1000


def test_an_h5py_without_the_locking_option_falls_back_to_the_environment(
    tmp_path, tiny_corpus, monkeypatch, no_lock_env
):
    def old_h5py_file(path, mode="r", *args, **kw):
        if "locking" in kw:
            raise TypeError("__init__() got an unexpected keyword argument 'locking'")
        return lustre_file(path, mode, *args, **kw)

    monkeypatch.setattr(h5py, "File", old_h5py_file)
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    run_preprocess(cfg)
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "FALSE"
    assert len(open_corpus(cfg.h5_path).vocab) > 10
