"""Reserving disk space for a write, without ever writing zeros to do it.

``os.posix_fallocate`` is glibc's: where the file system has no fallocate (some virtual and
network file systems) glibc emulates it by writing a byte into every 4 KiB block, a second
write of every page the writer is about to fill. The Linux system call either reserves the
space or says it cannot, and then nothing is reserved.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

__all__ = ["reserve_space"]

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def _linux_fallocate() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _linux_fallocate()


def reserve_space(fd: int, offset: int, length: int) -> bool:
    """Allocate ``length`` bytes of ``fd`` from ``offset`` (growing the file); False where the
    file system cannot reserve space. A full disk or a file size limit raises OSError."""
    if length <= 0:
        return True
    if _FALLOCATE is not None:
        if _FALLOCATE(fd, 0, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in _UNSUPPORTED:
            return False
        raise OSError(err, os.strerror(err))
    if not hasattr(os, "posix_fallocate"):
        return False
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        raise
    return True
