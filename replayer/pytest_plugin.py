"""pytest plugin: one test item per replayed call result.

``pytest --tensortrace-trace ref.h5 --tensortrace-candidates cands.py`` replays the trace
into the candidates once, at collection, and adds an item per (call, phase) whose failure
message is the comparison message (one line per diverging tensor, then the bad batch
elements), so divergences show up in the test tools people already
use. Without the options the plugin only registers them: no collection, no torch import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._report import CallResult, ReplayReport

__all__ = ["ReplayCollector", "ReplayItem"]

_TRACE, _CANDIDATES, _DEVICE = "tensortrace_trace", "tensortrace_candidates", "tensortrace_device"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tensortrace", "tensortrace replay of a recorded trace")
    group.addoption("--tensortrace-trace", dest=_TRACE, metavar="PATH", default=None,
                    help="replay this trace; one test per replayed call and phase")
    group.addoption("--tensortrace-candidates", dest=_CANDIDATES, metavar="PATH", default=None,
                    help="candidates file (.py defining CANDIDATES) to replay into")
    group.addoption("--tensortrace-device", dest=_DEVICE, metavar="DEVICE", default="cpu",
                    help="device for the candidates (default cpu)")


def _enabled(config: pytest.Config) -> bool:
    trace, cands = config.getoption(_TRACE), config.getoption(_CANDIDATES)
    if bool(trace) != bool(cands):
        raise pytest.UsageError("--tensortrace-trace and --tensortrace-candidates go together")
    return bool(trace)


def _ranges(values: list[int]) -> str:
    """``1..31`` for runs, commas between them."""
    runs: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(runs)


class ReplayFailure(Exception):
    """A diverging or raising call; its text is the report's message for the call."""


class ReplayItem(pytest.Item):
    """One call in one phase; the verdict was reached at collection, running reports it."""

    def __init__(self, *, result: CallResult, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result = result

    def runtest(self) -> None:
        r = self.result
        if r.status == "skipped":
            pytest.skip("; ".join(r.notes) or "not replayable")
        if r.status == "error":
            raise ReplayFailure(f"candidate raised: {r.error}\n{r.traceback or ''}".rstrip())
        if r.status == "fail":
            lines = [f"{t.name}: {t.message}" for t in r.tensors if not t.passed]
            bad = r.bad_batch_indices
            if bad:
                lines.append("bad batch elements: " + _ranges(bad))
            raise ReplayFailure("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ReplayFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class ReplayCollector(pytest.Collector):
    """The replayed trace as a collector: an item per call result of its report."""

    def __init__(self, *, report: ReplayReport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report = report

    def collect(self) -> list[pytest.Item]:
        return [
            ReplayItem.from_parent(
                self, name=f"test_replay[call {r.call} {r.label} {r.phase}]", result=r)
            for r in self.report.results
        ]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Replay once, then add the items (with the collection hooks, so counts and ``-k`` see
    them) before keyword and marker selection run."""
    if not _enabled(config):
        return
    import tracefmt

    from ._replay import ReplayOptions, replay_trace

    trace = str(config.getoption(_TRACE))
    try:
        report = replay_trace(trace, str(config.getoption(_CANDIDATES)),
                              options=ReplayOptions(device=str(config.getoption(_DEVICE))))
    except tracefmt.TraceError as exc:
        raise pytest.UsageError(f"tensortrace: {exc}") from None
    collector = ReplayCollector.from_parent(session, name=Path(trace).name,
                                            nodeid=Path(trace).name, path=Path(trace).resolve(),
                                            report=report)
    items.extend(session.genitems(collector))
