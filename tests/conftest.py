"""Shared fixtures: recordings of the example recipe, each made once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# The example models are tiny: on a loaded 2-core machine a second intra-op thread only adds
# contention (a 10 ms step became 1 s). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "translation.py"
EXAMPLE_STEPS = 2
EXAMPLE_SEED = 0


@pytest.fixture(scope="session")
def translation_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-mode recording of ``examples/translation.py``: 2 steps, seed 0."""
    import recorder

    path = tmp_path_factory.mktemp("translation") / "ref.h5"
    recorder.record_recipe(str(EXAMPLE), path, steps=EXAMPLE_STEPS, seed=EXAMPLE_SEED)
    return path


@pytest.fixture(scope="session")
def translation_reader(translation_trace: Path) -> Iterator[object]:
    """The session's example recording, opened once for reading."""
    import tracefmt

    with tracefmt.open_trace(translation_trace) as reader:
        yield reader


@pytest.fixture(scope="session")
def translation_eval_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One step of ``examples/translation.py`` recorded in eval mode (Dropout is the identity)."""
    import recorder

    recipe = recorder.load_recipe(str(EXAMPLE))
    model = recipe.build_model().eval()
    path = tmp_path_factory.mktemp("translation-eval") / "eval.h5"
    with recorder.record(model, path) as rec:
        rec.backward(recipe.run_step(model, 0))
        rec.step()
    return path
