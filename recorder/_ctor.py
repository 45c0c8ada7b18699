"""Constructor arguments of modules: caught while the model is built, or derived after.

``capture_constructor_args()`` watches ``__init__`` calls with a profile hook, so every
nn.Module subclass is covered without patching classes; the outermost ``__init__`` of each
object (the most derived class) is the one kept. For a model built elsewhere,
``derive_constructor_args`` reads same-named attributes, as torch.nn built-ins keep them.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["capture_constructor_args", "derive_constructor_args", "ConstructorArgs"]

ConstructorArgs = tuple[tuple[Any, ...], dict[str, Any]]

# ``__init__``s that take ``*args, **kwargs`` and need none of them.
_TAKES_NOTHING = (nn.Module.__init__, nn.Identity.__init__)

_captured: weakref.WeakKeyDictionary[nn.Module, ConstructorArgs] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def capture_constructor_args() -> Iterator[None]:
    """Within this block, remember how each nn.Module was constructed."""
    previous = sys.getprofile()
    previous_threads = threading.getprofile()
    seen: set[int] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or frame.f_code.co_name != "__init__":
            return
        code = frame.f_code
        if code.co_argcount == 0:
            return
        first = frame.f_locals.get(code.co_varnames[0])
        if not isinstance(first, nn.Module) or id(first) in seen:
            return
        seen.add(id(first))
        with contextlib.suppress(TypeError):
            _captured[first] = _args_from_frame(frame)

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        yield
    finally:
        _restore_profile(previous)
        threading.setprofile(previous_threads)


def _restore_profile(previous: Any) -> None:
    """Put back the profiler that ran before: a Python function, or cProfile's C-level hook.

    ``sys.getprofile()`` reports an active ``cProfile.Profile`` as the object itself, which
    ``sys.setprofile`` refuses (not callable); it re-installs itself with ``enable()``.
    """
    if previous is None or callable(previous):
        sys.setprofile(previous)
    elif callable(getattr(previous, "enable", None)):
        sys.setprofile(None)
        previous.enable()
    else:
        sys.setprofile(None)


def _args_from_frame(frame: Any) -> ConstructorArgs:
    code = frame.f_code
    names = code.co_varnames
    n_pos = code.co_argcount
    n_kwonly = code.co_kwonlyargcount
    flocals = frame.f_locals
    args = [flocals[n] for n in names[1:n_pos] if n in flocals]
    kwargs = {n: flocals[n] for n in names[n_pos:n_pos + n_kwonly] if n in flocals}
    idx = n_pos + n_kwonly
    if code.co_flags & inspect.CO_VARARGS:
        args.extend(flocals.get(names[idx], ()))
        idx += 1
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kwargs.update(flocals.get(names[idx], {}))
    return tuple(args), kwargs


def derive_constructor_args(module: nn.Module) -> ConstructorArgs | None:
    """Captured arguments if there are any, else same-named attributes of the module.

    Returns None when a required argument has no recoverable value.
    """
    if module in _captured:
        return _captured[module]
    try:
        sig = inspect.signature(type(module).__init__)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())[1:]
    if params and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params) \
            and type(module).__init__ not in _TAKES_NOTHING:
        return None  # ``__init__(self, *args, **kwargs)`` (LSTM, GRU): names unknown
    kwargs: dict[str, Any] = {}
    for p in params:
        name = p.name
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in ("device", "dtype"):
            continue
        if hasattr(module, name):
            value = getattr(module, name)
            if name == "bias" and (value is None or isinstance(value, torch.Tensor)):
                value = value is not None
            elif isinstance(value, (torch.Tensor, nn.Module)):
                if p.default is p.empty:
                    return None
                continue
            kwargs[name] = value
        elif p.default is p.empty:
            return None
    return (), kwargs
