"""recorder — record a working PyTorch model into a tensortrace trace.

``with recorder.record(model, "ref.h5") as rec:`` around your own loop (``rec.step()``
between steps), or ``tensortrace record RECIPE -o ref.h5`` on the command line.
"""

from ._ctor import capture_constructor_args, derive_constructor_args
from ._recipe import Recipe, load_recipe, record_recipe
from ._recorder import Recorder, RecordOptions, record
from ._torchio import dtype_name, rebuild_torch, tensor_from_trace, torch_dtype

__all__ = [
    "Recipe",
    "RecordOptions",
    "Recorder",
    "capture_constructor_args",
    "derive_constructor_args",
    "dtype_name",
    "load_recipe",
    "rebuild_torch",
    "record",
    "record_recipe",
    "tensor_from_trace",
    "torch_dtype",
]
