"""The recorder: module hooks that write every call's inputs, outputs and gradients.

Forward: a pre-hook (with kwargs) snapshots the inputs, RNG state and modes; a post-hook
snapshots the outputs and writes the CALL event. Backward: inputs that require grad are
passed to the module as identity views, so a hook on the view sees exactly this call's
input gradient (a hook on the caller's tensor would see the sum over all its consumers);
one ``_GradCollector`` per call gathers the gradients of those views and of the outputs
whatever in-place ops follow, for kwargs tensors and multiple outputs too.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tracefmt
from tracefmt import EventKind

from ._capture import TensorCapture
from ._ctor import derive_constructor_args
from ._derive import dropout_p
from ._gc import freeze_heap, thaw_heap
from ._sink import WriterThread
from ._state import autocast_state, environment
from ._torchio import dtype_name, supported

__all__ = ["RecordOptions", "Recorder", "record"]


@dataclass(frozen=True)
class RecordOptions:
    """What to record and how; stored in the trace's run event."""

    mode: str = "full"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    grad_scale: float = 1.0
    every: int = 1
    max_calls_per_module: int | None = None
    byte_budget: int | None = None
    memory_budget: int = 1 << 30
    compression: str = "none"
    flush_every: int = 256

    def __post_init__(self) -> None:
        if self.mode not in ("full", "stats"):
            raise tracefmt.UsageError(f"mode must be 'full' or 'stats', not {self.mode!r}")
        if self.every < 1:
            raise tracefmt.UsageError("--every must be at least 1")
        if not self.grad_scale > 0:
            raise tracefmt.UsageError("--grad-scale must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d


@dataclass
class _Alias:
    """An identity view handed to the module in place of an input that requires grad.

    ``base`` and ``base_fn`` (the view's base and its grad_fn when the view was made) find
    the gradient of the input when the module modifies the view in place.
    """

    view: torch.Tensor
    version: int
    base: torch.Tensor
    base_fn: Any


@dataclass
class _Frame:
    call: int
    module: nn.Module
    path: str
    index: int
    body: dict[str, Any]
    versions: dict[str, int]
    args_template: Any
    kwargs_template: Any
    aliases: list[_Alias] = field(default_factory=list)
    out_template: Any = None
    done: bool = False
    dropout_p: float | None = None  # a dropout in training: outputs may be stored as masks


class _GradCollector:
    """Gathers the gradients of a call's outputs and inputs in one backward pass, then reports.

    Like ``register_multi_grad_hook(mode="all")``, with two differences that matter here:
    a tensor whose hook fires counts even when the engine does not list its node as one it
    will execute (the loss itself, when ``backward()`` starts from it, is such a root), and
    a gradient can come from a node's post-hook (an input the module modified in place).
    Slots whose node does not run in this backward report None.

    Its hooks and the autograd nodes it watches form a cycle through C++ that Python's
    collector cannot see: ``release`` breaks it, or every call's collector, frame and
    tensors would stay alive for the rest of the process (and every full collection would
    walk them all).
    """

    def __init__(self, n: int, on_done: Callable[[list[torch.Tensor | None]], None]) -> None:
        self._n = n
        self._on_done: Callable[[list[torch.Tensor | None]], None] | None = on_done
        self._nodes: dict[int, Any] = {}
        self._tasks: dict[int, tuple[set[int], list[torch.Tensor | None]]] = {}
        self._handles: list[Any] = []
        self._lock = threading.Lock()

    def watch_tensor(self, slot: int, t: torch.Tensor) -> None:
        """Report ``t``'s gradient (w.r.t. its value now, even if modified in place later)."""
        self._nodes[slot] = torch.autograd.graph._get_grad_fn_or_grad_acc(t)
        self._handles.append(t.register_hook(lambda grad, s=slot: self._fire(s, grad)))

    def watch_node(self, slot: int, node: Any,
                   pick: Callable[[tuple[torch.Tensor | None, ...]], torch.Tensor | None]) -> None:
        """Report ``pick(grad_inputs)`` of ``node`` once it has run."""
        self._nodes[slot] = node

        def post(grad_inputs: Any, grad_outputs: Any, s: int = slot) -> None:
            self._fire(s, pick(grad_inputs))

        self._handles.append(node.register_hook(post))

    def release(self) -> None:
        """Remove the hooks and forget the nodes; later gradients are not reported."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._nodes.clear()
        self._tasks.clear()
        self._on_done = None

    def _fire(self, slot: int, grad: torch.Tensor | None) -> None:
        task = torch._C._current_graph_task_id()
        with self._lock:
            state = self._tasks.get(task)
            if state is None:
                expected = {s for s, node in self._nodes.items()
                            if torch._C._will_engine_execute_node(node)}
                state = self._tasks[task] = (expected, [None] * self._n)
            expected, grads = state
            grads[slot] = grad
            expected.discard(slot)
            if expected:
                return
            del self._tasks[task]
            on_done = self._on_done
        if on_done is not None:
            on_done(grads)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples/lists/dicts, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tensors(x, fn) for x in obj))
    if isinstance(obj, tuple):
        return tuple(_map_tensors(x, fn) for x in obj)
    if isinstance(obj, list):
        return [_map_tensors(x, fn) for x in obj]
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items()) if type(obj) is dict \
            else {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _only_tensor_id(node: Any) -> int | None:
    """The tensor id of a described tree that is one tensor, or a tuple of exactly one."""
    if isinstance(node, dict) and node.get("$") == "tuple" and len(node.get("items", ())) == 1:
        node = node["items"][0]
    if isinstance(node, dict) and node.get("$") == "tensor":
        return int(node["id"])
    return None


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _map_tensors(obj, lambda t: out.append(t) or t)
    return out


def _wants_grad(t: torch.Tensor) -> bool:
    return t.requires_grad and (t.is_floating_point() or t.is_complex())


class Recorder:
    """Records one model into one trace file. Use ``record(...)`` as a context manager."""

    def __init__(self, model: nn.Module, path: str | Path, *, options: RecordOptions | None = None,
                 recipe: str | None = None, seed: int | None = None,
                 on_progress: Callable[[Recorder], None] | None = None,
                 on_flush: Callable[[tuple[int, ...]], None] | None = None) -> None:
        """``on_flush(call_ids)`` runs on the writer thread once those calls are on disk."""
        self.model = model
        self.path = Path(path)
        self.options = options or RecordOptions()
        self._on_progress = on_progress
        self._recipe, self._seed = recipe, seed
        self._writer = tracefmt.TraceWriter(self.path, compression=self.options.compression)
        self._sink = WriterThread(self._writer, budget_bytes=self.options.memory_budget,
                                  on_flush=on_flush)
        # the pool keeps as much as may be in flight: a step's copies are reused the next
        # step only if they fit, and with half of it every step re-allocated (page faults on
        # the training thread) and freed (on the writer's) the part that did not
        self._capture = TensorCapture(self._sink, mode=self.options.mode,
                                      pool_bytes=self.options.memory_budget)
        self._handles: list[Any] = []
        self._stack: list[_Frame | None] = []
        self.step_index = 0
        self.calls = 0
        self._step_started = False
        self._grads_recorded = False
        self._module_calls: dict[str, int] = defaultdict(int)
        self._total_module_calls: dict[str, int] = defaultdict(int)
        self._recomputes: dict[str, int] = defaultdict(int)  # this backward's, by module path
        self._pending_bwd: list[tuple[_Frame, dict[str, Any]]] = []
        # collectors still hooked: this step's, and the previous step's that never reported
        # (their backward may still come, e.g. after a step() in the middle of accumulation)
        self._collectors: list[tuple[_Frame, _GradCollector]] = []
        self._stale_collectors: list[tuple[_Frame, _GradCollector]] = []
        self._bwd_flush_queued = False
        self._bwd_order = 0
        self._since_flush = 0
        self._last_rng: dict[str, tuple[torch.Tensor, int]] = {}
        self._loss: float | None = None
        self._budget_hit = False
        self._grads_partial = False
        self._closed = False
        self._froze_heap = False
        self._start()
        if on_progress:  # hands the recorder over before the first call, e.g. for Ctrl-C reports
            on_progress(self)
        if not self._closed:  # last, so that nothing after it can fail and leave it frozen
            self._froze_heap = freeze_heap()

    # -- setup -----------------------------------------------------------------------------

    def _start(self) -> None:
        model = self.model
        self._paths: dict[nn.Module, str] = {}
        self._module_index: dict[nn.Module, int] = {}
        canonical: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            canonical.setdefault(id(p), name)
        modules = []
        for i, (path, mod) in enumerate(model.named_modules()):
            self._paths[mod] = path
            self._module_index[mod] = i
            ctor = derive_constructor_args(mod)
            ctor_node = None
            if ctor is not None:
                args_node = tracefmt.describe(tuple(ctor[0]), self._ctor_leaf)
                kwargs_node = tracefmt.describe(dict(ctor[1]), self._ctor_leaf)
                if not tracefmt.has_opaque(args_node) and not tracefmt.has_opaque(kwargs_node):
                    ctor_node = {"args": args_node, "kwargs": kwargs_node}
            own_params = dict(mod.named_parameters(recurse=False))
            shared = {}
            for local, p in own_params.items():
                full = f"{path}.{local}" if path else local
                if canonical.get(id(p), full) != full:
                    shared[local] = canonical[id(p)]
            modules.append(tracefmt.ModuleInfo(
                i, path, f"{type(mod).__module__}.{type(mod).__qualname__}", ctor_node,
                tuple(own_params), tuple(n for n, _ in mod.named_buffers(recurse=False)), shared))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        options = self.options.to_dict() | {"recipe": self._recipe, "seed": self._seed}
        run = tracefmt.RunInfo(tuple(modules), environment(device), options)
        self._sink.put_event(EventKind.RUN, run.to_dict())
        for mod, path in self._paths.items():
            if not self._selected(path):
                continue
            self._handles.append(mod.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post_hook, with_kwargs=True,
                                                           always_call=True))

    def _selected(self, path: str) -> bool:
        name = path or "<root>"
        inc = self.options.include
        if inc and not any(fnmatch.fnmatchcase(name, g) for g in inc):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.options.exclude)

    @staticmethod
    def _ctor_leaf(obj: Any) -> Any:
        if isinstance(obj, torch.dtype):
            return {"$": "dtype", "name": dtype_name(obj)}
        if isinstance(obj, torch.device):
            return {"$": "device", "name": str(obj)}
        if isinstance(obj, (torch.Tensor, nn.Module)):
            return {"$": "opaque", "type": type(obj).__qualname__, "repr": "not a constructor value"}
        return NotImplemented

    def _leaf(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if not supported(obj):
                return {"$": "opaque", "type": f"torch.Tensor[{obj.dtype}, {obj.layout}]",
                        "repr": f"shape {tuple(obj.shape)}"}
            return {"$": "tensor", "id": self._capture.capture(obj)}
        return self._ctor_leaf(obj)

    # -- per-step --------------------------------------------------------------------------

    @property
    def recording_this_step(self) -> bool:
        return self.step_index % self.options.every == 0 and not self._budget_hit

    def _ensure_step_started(self) -> None:
        if self._step_started:
            return
        self._step_started = True
        self._capture.new_step()
        params = self._capture_named(self.model.named_parameters(), persistent=True)
        buffers = self._capture_named(self.model.named_buffers(), persistent=True)
        self._sink.put_event(EventKind.STEP, {"step": self.step_index, "params": params,
                                              "buffers": buffers}, step=self.step_index)

    def _capture_named(self, named: Iterator[tuple[str, torch.Tensor]], *,
                       persistent: bool = False) -> dict[str, int]:
        """Tensor ids by name, for the recordable ones; captured together (one launch per
        shape for device summaries in stats mode)."""
        kept = [(n, t) for n, t in named if supported(t)]
        ids = self._capture.capture_many([t for _, t in kept], persistent=persistent)
        return dict(zip((n for n, _ in kept), ids, strict=True))

    def backward(self, loss: torch.Tensor) -> None:
        """Call backward on ``loss`` times the recording's grad scale, and remember the loss.

        With a grad scale, an optimizer step wants the gradients divided back: call
        ``record_param_grads()`` first so the trace keeps the scaled ones.
        """
        self._loss = float(loss.detach().float().item())
        scale = self.options.grad_scale
        try:
            (loss * scale if scale != 1.0 else loss).backward()
        except BaseException:
            self._grads_partial = True
            raise

    def note_loss(self, loss: float) -> None:
        self._loss = float(loss)

    def record_param_grads(self) -> None:
        """Write this step's parameter gradients now (once per step; ``step()`` does otherwise).

        Call it before anything changes the gradients, e.g. unscaling them for an optimizer.
        """
        if not self._step_started or self._grads_recorded:
            return
        self._grads_recorded = True
        grads = self._capture_named(((n, p.grad) for n, p in self.model.named_parameters()
                                     if p.grad is not None))
        self._sink.put_event(EventKind.PARAM_GRADS, {"step": self.step_index, "grads": grads,
                                                     "loss": self._loss}, step=self.step_index)

    def step(self) -> None:
        """End the current step: write parameter gradients, flush, move to the next step."""
        if self._pending_bwd:
            self._flush_backward()
        self.record_param_grads()
        self._grads_recorded = False
        self._recomputes.clear()
        self._capture.flush_stats()
        self._sink.flush(wait=False)
        self._release_collectors()
        self._since_flush = 0
        self.step_index += 1
        self._step_started = False
        self._loss = None
        self._module_calls.clear()
        if self._on_progress:
            self._on_progress(self)

    # -- hooks -----------------------------------------------------------------------------

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        path = self._paths[module]
        if self._sink.raised:
            self._stack.append(None)
            return None
        if torch._C._current_graph_task_id() != -1:
            self._recomputes[path] += 1
            self._stack.append(None)
            return None
        if not self.recording_this_step or self._closed or self._over_caps(path):
            self._stack.append(None)
            return None
        self._ensure_step_started()
        call = self.calls
        self.calls += 1
        index = self._module_calls[path]
        self._module_calls[path] += 1
        self._total_module_calls[path] += 1
        parent = next((f.call for f in reversed(self._stack) if f is not None), None)
        depth = sum(1 for f in self._stack if f is not None)
        args_node = tracefmt.describe(tuple(args), self._leaf)
        kwargs_node = tracefmt.describe(dict(kwargs), self._leaf)
        notes = []
        replayable = True
        if tracefmt.has_opaque(args_node) or tracefmt.has_opaque(kwargs_node):
            replayable = False
            notes.append("an input has no recordable form (opaque); the call is not replayable")
        own_buffers = [(n, b) for n, b in module._buffers.items() if b is not None]  # no generator
        versions = {n: b._version for n, b in own_buffers}
        buffers_before = {n: self._capture.capture(b) for n, b in own_buffers if supported(b)}
        body = {
            "call": call, "step": self.step_index, "module": path,
            "type": f"{type(module).__module__}.{type(module).__qualname__}", "index": index,
            "parent": parent, "depth": depth, "training": module.training,
            "grad_enabled": torch.is_grad_enabled(), "inference_mode": torch.is_inference_mode_enabled(),
            "autocast": autocast_state(), "rng": self._rng_state(), "args": args_node,
            "kwargs": kwargs_node, "buffers_before": buffers_before, "replayable": replayable,
            "notes": notes,
        }
        frame = _Frame(call, module, path, index, body, versions, args, kwargs)
        self._stack.append(frame)
        if not torch.is_grad_enabled():
            return None

        def alias(t: torch.Tensor) -> torch.Tensor:
            if _wants_grad(t):
                v = t.view_as(t)
                base = v._base if v._base is not None else t
                frame.aliases.append(_Alias(v, v._version, base, base.grad_fn))
                return v
            return t

        new_args = _map_tensors(tuple(args), alias)
        new_kwargs = _map_tensors(dict(kwargs), alias)
        return (new_args, new_kwargs) if frame.aliases else None

    def _post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._stack:
            return
        frame = self._stack.pop()
        if frame is None or frame.module is not module or self._sink.raised:
            return
        body = frame.body
        frame.dropout_p = dropout_p(module) if isinstance(output, torch.Tensor) else None
        base = _only_tensor_id(body["args"]) if frame.dropout_p is not None else None
        if base is not None and supported(output):
            body["outputs"] = {"$": "tensor", "id": self._capture.capture(
                output, dropout_of=(base, frame.dropout_p))}
        else:
            frame.dropout_p = None
            body["outputs"] = tracefmt.describe(output, self._leaf)
        if tracefmt.has_opaque(body["outputs"]):
            body["notes"].append("an output has no recordable form (opaque)")
        modified = [a for a in frame.aliases if a.view._version != a.version]
        if modified:
            body["notes"].append(
                f"{len(modified)} input(s) modified in place by the module; recorded values and "
                "gradients are those of the input before the modification")
        body["buffers_after"] = {
            n: self._capture.capture(b) for n, b in module._buffers.items()
            if b is not None and supported(b) and b._version != frame.versions.get(n)
        }
        self._sink.put_event(EventKind.CALL, body, step=self.step_index, call=frame.call,
                             module=self._module_index[module])
        self._since_flush += 1
        if self._since_flush >= self.options.flush_every and not self._capture.has_pending_stats:
            self._sink.flush(wait=False)
            self._since_flush = 0
        frame.out_template = output
        self._watch_grads(frame, [t for t in _flat_tensors(output) if _wants_grad(t)])
        if self._on_progress and frame.call % 64 == 0:
            self._on_progress(self)

    def _over_caps(self, path: str) -> bool:
        cap = self.options.max_calls_per_module
        if cap is not None and self._total_module_calls[path] >= cap:
            return True
        budget = self.options.byte_budget
        if budget is not None and self._capture.bytes_referenced >= budget and not self._budget_hit:
            self._budget_hit = True
            self._sink.put_event(EventKind.NOTE, {"message": f"byte budget of {budget} reached; "
                                                  "recording stopped here"})
        return self._budget_hit

    def _rng_state(self) -> dict[str, Any]:
        """Tensor ids of the RNG states before this call; a state unchanged since the last
        call (no random op ran in between, the usual case) reuses the last one's id."""
        out: dict[str, Any] = {"cpu": self._same_or_new("cpu", torch.get_rng_state())}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda"] = [self._same_or_new(f"cuda:{i}", s)
                           for i, s in enumerate(torch.cuda.get_rng_state_all())]
        return out

    def _same_or_new(self, key: str, state: torch.Tensor) -> int:
        last = self._last_rng.get(key)
        if last is not None and torch.equal(last[0], state):
            return last[1]
        tid = self._capture.capture(state)
        self._last_rng[key] = (state, tid)
        return tid

    # -- backward --------------------------------------------------------------------------

    def _watch_grads(self, frame: _Frame, outs: list[torch.Tensor]) -> None:
        """Collect this call's output gradients, then its input gradients, in one report."""
        if not torch.is_grad_enabled() or not (outs or frame.aliases):
            return
        n_out = len(outs)
        collector = _GradCollector(
            n_out + len(frame.aliases),
            lambda grads, f=frame: self._emit_backward(f, grads[:n_out], grads[n_out:]))
        self._collectors.append((frame, collector))
        for slot, t in enumerate(outs):
            collector.watch_tensor(slot, t)
        for slot, a in enumerate(frame.aliases, start=n_out):
            if a.view._version == a.version:
                collector.watch_tensor(slot, a.view)
                continue
            node = _first_rewrite(a.base.grad_fn, a.base_fn)
            if node is not None:
                collector.watch_node(slot, node, lambda gi, a=a: _view_grad(gi, a))
        frame.aliases = []

    def _emit_backward(self, frame: _Frame, grad_out: list[torch.Tensor | None],
                       grad_in: list[torch.Tensor | None]) -> None:
        if frame.done or self._closed or self._sink.raised:
            return
        frame.done = True
        outs = iter(grad_out)

        def out_leaf(t: torch.Tensor) -> Any:
            return next(outs, None) if _wants_grad(t) else None

        ins = iter(grad_in)

        def in_leaf(t: torch.Tensor) -> Any:
            return next(ins, None) if _wants_grad(t) else None

        grad_outputs = _map_tensors(frame.out_template, out_leaf)
        grad_args = _map_tensors(tuple(frame.args_template), in_leaf)
        grad_kwargs = _map_tensors(dict(frame.kwargs_template), in_leaf)
        out_node = tracefmt.describe(grad_outputs, self._leaf)
        leaf = self._leaf
        base = _only_tensor_id(out_node) if frame.dropout_p is not None else None
        if base is not None:  # a dropout's input gradient: its output gradient through the mask
            def leaf(obj: Any, base: int = base, p: float = frame.dropout_p) -> Any:
                if isinstance(obj, torch.Tensor) and supported(obj):
                    return {"$": "tensor", "id": self._capture.capture(obj, dropout_of=(base, p))}
                return self._leaf(obj)
        body = {
            "call": frame.call, "order": self._bwd_order,
            "grad_outputs": out_node,
            "grad_args": tracefmt.describe(grad_args, leaf),
            "grad_kwargs": tracefmt.describe(grad_kwargs, self._leaf),
        }
        self._bwd_order += 1
        self._pending_bwd.append((frame, body))
        if not self._bwd_flush_queued:
            self._bwd_flush_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._flush_backward)
        frame.out_template = frame.args_template = frame.kwargs_template = None

    def _flush_backward(self) -> None:
        """Write the backward events of a finished backward pass, with its recompute counts.

        Gradients were snapshotted when they arrived; the events wait for the end of the pass
        because a checkpointed module's recompute can come after its output gradient.
        """
        self._bwd_flush_queued = False
        pending, self._pending_bwd = self._pending_bwd, []
        if self._sink.raised:
            return
        for frame, body in pending:
            body["recomputes"] = self._recomputes.get(frame.path, 0)
            self._sink.put_event(EventKind.BACKWARD, body, step=frame.body["step"],
                                 call=frame.call, module=self._module_index[frame.module])
        self._recomputes.clear()

    def _release_collectors(self) -> None:
        """Unhook the collectors whose call reported, and those one step past it."""
        for _, collector in self._stale_collectors:
            collector.release()
        keep = []
        for frame, collector in self._collectors:
            if frame.done:
                collector.release()
            else:
                keep.append((frame, collector))
        self._collectors, self._stale_collectors = [], keep

    # -- lifecycle -------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until everything recorded so far is written and durable for readers."""
        self._capture.flush_stats()
        self._sink.flush(wait=True)

    @property
    def bytes_written(self) -> int:
        return self._sink.bytes_written

    @property
    def flushed_calls(self) -> int:
        return self._sink.flushed_calls

    @property
    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "tensors": self._capture.captured,
                "deduplicated": self._capture.deduplicated, "encoded": self._sink.encoded,
                "bytes_referenced": self._capture.bytes_referenced,
                "bytes_written": self.bytes_written}

    def close(self, *, complete: bool = True) -> None:
        """Remove the hooks and finish the file (``complete`` writes the END marker)."""
        if self._closed:
            return
        for h in self._handles:
            h.remove()
        self._handles.clear()
        try:
            if self._step_started and not self._sink.raised:
                if not complete and self._grads_partial:
                    self._grads_recorded = True  # half-accumulated .grad would be recorded
                self.step()
            self._capture.flush_stats()
        finally:
            self._closed = True
            for _, collector in self._collectors + self._stale_collectors:
                collector.release()
            self._collectors = self._stale_collectors = []
            if self._froze_heap:
                self._froze_heap = False
                thaw_heap()
            self._sink.close(complete=complete)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(complete=exc_type is None)


def _first_rewrite(node: Any, before: Any) -> Any:
    """The first in-place node (CopySlices) stacked on ``before``, walking down from ``node``.

    When a module modifies its input view in place, autograd rewrites the view's base: the
    base's grad_fn becomes a CopySlices node whose first input is the base's old grad_fn. The
    gradient that node passes on is the one w.r.t. the input before it was modified.
    """
    if before is None:
        return None
    for _ in range(256):
        if node is None or not node.next_functions:
            return None
        below = node.next_functions[0][0]
        if below is before:
            return node
        node = below
    return None


def _view_grad(grad_inputs: tuple[torch.Tensor | None, ...], alias: _Alias) -> torch.Tensor | None:
    """The part of a CopySlices node's base gradient that belongs to the aliased input."""
    g = grad_inputs[0] if grad_inputs else None
    if g is None:
        return None
    v = alias.view
    return g.as_strided(v.shape, v.stride(), v.storage_offset() - alias.base.storage_offset())


@contextmanager
def record(model: nn.Module, path: str | Path, *,
           on_flush: Callable[[tuple[int, ...]], None] | None = None,
           **options: Any) -> Iterator[Recorder]:
    """Record ``model`` into ``path`` around the user's own loop; call ``rec.step()`` between steps.

    Options are the fields of RecordOptions (``mode``, ``include``, ``exclude``,
    ``grad_scale``, ``every``, ``max_calls_per_module``, ``byte_budget``, ``memory_budget``,
    ``compression``, ``flush_every``). ``on_flush(call_ids)`` is called on the writer thread
    after each flush with the ids of the calls it made durable (they survive a kill).
    Until it closes, objects older than the recording are frozen out of Python's cyclic
    collector (``gc.freeze``; see ``_gc``), unless the program froze objects itself.
    """
    for key in ("include", "exclude"):
        if isinstance(options.get(key), str):
            options[key] = (options[key],)
        elif key in options:
            options[key] = tuple(options[key])
    rec = Recorder(model, path, options=RecordOptions(**options), on_flush=on_flush)
    try:
        yield rec
    except BaseException:
        rec.close(complete=False)
        raise
    rec.close(complete=True)
