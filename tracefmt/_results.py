"""Replay results files (spec/results-format.md): the report plus the candidate's tensors.

Written by the replayer, read by the terminal UI (which never imports torch), so this
lives with the format: h5py, numpy and msgpack only.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._errors import TraceFormatError, TraceWriteError
from ._reader import check_identity, check_safe, open_hdf5
from ._tree import pack_blob, unpack_blob

__all__ = ["RESULTS_FORMAT", "write_results", "ResultsReader", "open_results"]

RESULTS_FORMAT = "tensortrace-results"
_NAME = re.compile(r"^c(\d{1,12})\.(forward|backward)\.(\d{1,6})$")


def write_results(path: str | Path, report: Mapping[str, Any],
                  tensors: Iterable[tuple[int, str, str, np.ndarray]]) -> None:
    """Write a results file atomically: ``report`` (the JSON report as a dict) and candidate
    tensors as ``(call, phase, tensor name, values)``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = RESULTS_FORMAT
            f.attrs["format_major"] = np.int64(1)
            f.attrs["format_minor"] = np.int64(0)
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["trace"] = str(report.get("trace", ""))
            blob = pack_blob(dict(report))
            f.create_dataset("report", data=np.frombuffer(blob, np.uint8))
            group = f.create_group("candidate")
            counters: dict[tuple[int, str], int] = {}
            for call, phase, name, values in tensors:
                k = counters.get((call, phase), 0)
                counters[(call, phase)] = k + 1
                ds = group.create_dataset(f"c{call}.{phase}.{k}", data=np.ascontiguousarray(values))
                ds.attrs["name"] = name
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TraceWriteError(f"cannot write results ({exc})", path=path) from None


class ResultsReader:
    """A results file: ``report`` (dict) and ``candidate(call, phase, name)`` arrays."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file, _ = open_hdf5(self.path)
        try:
            self._open()
        except Exception:
            self._file.close()
            raise

    def _open(self) -> None:
        f = self._file
        try:
            check_identity(f, name=RESULTS_FORMAT, major=1, what="results format")
        except TraceFormatError as exc:
            exc.path = str(self.path)
            raise
        check_safe(f, self.path)
        ds = f.get("report")
        if not isinstance(ds, h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 1:
            raise TraceFormatError("results file lacks a 1-D uint8 /report", path=self.path)
        report = unpack_blob(ds[...].tobytes(), what="results report")
        if not isinstance(report, dict) or not isinstance(report.get("calls"), list):
            raise TraceFormatError("results report is not a report map", path=self.path)
        self.report: dict[str, Any] = report
        self.index: dict[tuple[int, str, str], str] = {}
        group = f.get("candidate")
        if isinstance(group, h5py.Group):
            for key in group:
                m = _NAME.match(key)
                if not m:
                    continue
                name = group[key].attrs.get("name", "")
                name = name.decode() if isinstance(name, bytes) else str(name)
                self.index[(int(m.group(1)), m.group(2), name)] = key

    def calls(self) -> list[dict[str, Any]]:
        return [c for c in self.report["calls"] if isinstance(c, dict)]

    def candidate(self, call: int, phase: str, name: str) -> np.ndarray | None:
        key = self.index.get((call, phase, name))
        return None if key is None else np.asarray(self._file["candidate"][key])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_results(path: str | Path) -> ResultsReader:
    """Open a results file; raises a TraceError naming the file when it is not one."""
    return ResultsReader(path)
