"""Tree descriptions: nested inputs and outputs as msgpack, with tensors as leaves.

A node is a msgpack nil, bool, int, float, str or bin, or a map tagged by the key ``"$"``:
``tensor`` (a row of ``/tensors``), ``tuple``, ``list``, ``dict``, ``object`` (dataclass,
namedtuple, model output), ``dtype``, ``device``, ``complex`` or ``opaque`` (something that
could not be recorded). Plain msgpack arrays and untagged maps are not nodes, so every
container says what it was. Decoding enforces size and depth limits before trusting a blob.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from ._errors import TraceFormatError, UnsafeTraceError

__all__ = [
    "TensorRef",
    "Opaque",
    "ObjectNode",
    "pack_blob",
    "unpack_blob",
    "describe",
    "rebuild",
    "iter_tensor_leaves",
    "check_tree",
    "default_leaf",
    "has_opaque",
    "MAX_BLOB_BYTES",
    "MAX_TREE_DEPTH",
]

MAX_BLOB_BYTES = 64 << 20
MAX_TREE_DEPTH = 32
MAX_CONTAINER_LEN = 1 << 20

_CONTAINER_KINDS = {"tuple", "list", "dict", "object"}


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor leaf: the row index of the tensor in ``/tensors``."""

    id: int


@dataclasses.dataclass(frozen=True)
class Opaque:
    """A value that had no msgpack form; its presence makes a call not replayable."""

    type: str
    repr: str


@dataclasses.dataclass(frozen=True)
class ObjectNode:
    """A dataclass-like value: its type's qualified name and its fields in order."""

    type: str
    fields: tuple[tuple[str, Any], ...]


def pack_blob(obj: Any) -> bytes:
    """Serialise a metadata map to msgpack bytes."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def unpack_blob(data: bytes, *, what: str = "blob") -> Any:
    """Decode msgpack with limits; any malformed or oversized input is a TraceFormatError."""
    if len(data) > MAX_BLOB_BYTES:
        raise UnsafeTraceError(f"{what} is {len(data)} bytes, over the {MAX_BLOB_BYTES} limit")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_str_len=MAX_BLOB_BYTES,
            max_bin_len=MAX_BLOB_BYTES,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise TraceFormatError(f"{what} is not valid msgpack ({detail})") from None
    except (TypeError, RecursionError) as exc:
        raise TraceFormatError(f"{what} is not valid msgpack ({exc})") from None


def _refuse_ext(code: int, data: bytes) -> Any:
    """``max_ext_len=0`` still lets zero-length ext values through; the format has none."""
    raise ValueError(f"msgpack ext type {code} is not allowed")


def describe(obj: Any, leaf: Callable[[Any], Any], *, _depth: int = 0) -> Any:
    """Describe a Python value as a tree node; ``leaf(obj)`` returns a node for tensors
    and other framework objects, or ``NotImplemented`` to let the generic rules apply."""
    if _depth > MAX_TREE_DEPTH:
        return {"$": "opaque", "type": type(obj).__qualname__, "repr": "nested too deeply"}
    node = leaf(obj)
    if node is not NotImplemented:
        return node
    if obj is None or isinstance(obj, (bool, str, bytes)):
        return obj
    if isinstance(obj, int):
        return obj if -(1 << 63) <= obj < (1 << 64) else {"$": "opaque", "type": "int", "repr": str(obj)}
    if isinstance(obj, float):
        return obj
    if isinstance(obj, complex):
        return {"$": "complex", "re": obj.real, "im": obj.imag}
    if _depth >= MAX_TREE_DEPTH:  # its items would sit deeper than check_tree allows
        return {"$": "opaque", "type": type(obj).__qualname__, "repr": "nested too deeply"}
    d = _depth + 1
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        fields = [[f, describe(getattr(obj, f), leaf, _depth=d)] for f in obj._fields]
        return {"$": "object", "type": _qualname(obj), "fields": fields}
    if isinstance(obj, tuple):
        return {"$": "tuple", "items": [describe(x, leaf, _depth=d) for x in obj]}
    if isinstance(obj, list):
        return {"$": "list", "items": [describe(x, leaf, _depth=d) for x in obj]}
    if isinstance(obj, dict) and type(obj) is dict:
        return {"$": "dict", "items": [[_key(k), describe(v, leaf, _depth=d)] for k, v in obj.items()]}
    if isinstance(obj, dict):  # OrderedDict, transformers ModelOutput and friends
        fields = [[str(k), describe(v, leaf, _depth=d)] for k, v in obj.items()]
        return {"$": "object", "type": _qualname(obj), "fields": fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = [
            [f.name, describe(getattr(obj, f.name), leaf, _depth=d)] for f in dataclasses.fields(obj)
        ]
        return {"$": "object", "type": _qualname(obj), "fields": fields}
    return {"$": "opaque", "type": _qualname(obj), "repr": _short_repr(obj)}


def _key(k: Any) -> Any:
    return k if isinstance(k, (str, int, float, bool)) or k is None else repr(k)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ must not stop a recording
        text = f"<{type(obj).__qualname__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def check_tree(node: Any, *, n_tensors: int | None = None, _depth: int = 0) -> None:
    """Raise TraceFormatError unless ``node`` is a well-formed tree description."""
    if _depth > MAX_TREE_DEPTH:
        raise UnsafeTraceError(f"tree nested deeper than {MAX_TREE_DEPTH}")
    if node is None or isinstance(node, (bool, int, float, str, bytes)):
        return
    if not isinstance(node, dict) or not isinstance(node.get("$"), str):
        raise TraceFormatError(f"tree node of type {type(node).__name__} has no '$' tag")
    tag = node["$"]
    if tag == "tensor":
        tid = node.get("id")
        if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
            raise TraceFormatError(f"tensor node has bad id {tid!r}")
        if n_tensors is not None and tid >= n_tensors:
            raise TraceFormatError(f"tensor node refers to row {tid}, but /tensors has {n_tensors}")
    elif tag in ("tuple", "list"):
        items = node.get("items")
        if not isinstance(items, list):
            raise TraceFormatError(f"{tag} node has no items list")
        for x in items:
            check_tree(x, n_tensors=n_tensors, _depth=_depth + 1)
    elif tag in ("dict", "object"):
        pairs = node.get("items" if tag == "dict" else "fields")
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise TraceFormatError(f"{tag} node has malformed key/value pairs")
        if tag == "object" and not isinstance(node.get("type"), str):
            raise TraceFormatError("object node has no type name")
        keys = (str,) if tag == "object" else (str, int, float, bool, type(None))
        if not all(isinstance(k, keys) for k, _ in pairs):
            raise TraceFormatError(f"{tag} node has a key that is not a {'string' if tag == 'object' else 'scalar'}")
        for _, v in pairs:
            check_tree(v, n_tensors=n_tensors, _depth=_depth + 1)
    elif tag in ("dtype", "device"):
        if not isinstance(node.get("name"), str):
            raise TraceFormatError(f"{tag} node has no name")
    elif tag == "complex":
        if not all(isinstance(node.get(k), (int, float)) for k in ("re", "im")):
            raise TraceFormatError("complex node needs numeric re and im")
    elif tag == "opaque":
        if not isinstance(node.get("type"), str):
            raise TraceFormatError("opaque node has no type name")
    else:
        raise TraceFormatError(f"unknown tree node tag {tag!r}")


def rebuild(node: Any, leaf: Callable[[dict], Any]) -> Any:
    """Turn a tree node back into Python values; ``leaf`` builds tensor/dtype/device/opaque nodes."""
    if not isinstance(node, dict):
        return node
    tag = node["$"]
    if tag == "tuple":
        return tuple(rebuild(x, leaf) for x in node["items"])
    if tag == "list":
        return [rebuild(x, leaf) for x in node["items"]]
    if tag == "dict":
        return {k: rebuild(v, leaf) for k, v in node["items"]}
    if tag == "object":
        return ObjectNode(node["type"], tuple((k, rebuild(v, leaf)) for k, v in node["fields"]))
    if tag == "complex":
        return complex(node["re"], node["im"])
    return leaf(node)


def default_leaf(node: dict) -> Any:
    """Leaf builder that needs no framework: TensorRef, dtype/device names, Opaque."""
    tag = node["$"]
    if tag == "tensor":
        return TensorRef(node["id"])
    if tag in ("dtype", "device"):
        return node["name"]
    return Opaque(node.get("type", "?"), node.get("repr", ""))


def iter_tensor_leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, int]]:
    """Yield ``(name, tensor_id)`` for every tensor leaf; names are dotted paths of keys."""
    if not isinstance(node, dict):
        return
    tag = node.get("$")
    if tag == "tensor":
        yield prefix, node["id"]
    elif tag in ("tuple", "list"):
        for i, x in enumerate(node["items"]):
            yield from iter_tensor_leaves(x, _join(prefix, str(i)))
    elif tag in ("dict", "object"):
        for k, v in node["items" if tag == "dict" else "fields"]:
            yield from iter_tensor_leaves(v, _join(prefix, str(k)))


def has_opaque(node: Any) -> bool:
    """Whether a tree holds a value that could not be recorded."""
    if not isinstance(node, dict):
        return False
    tag = node.get("$")
    if tag == "opaque":
        return True
    if tag in ("tuple", "list"):
        return any(has_opaque(x) for x in node["items"])
    if tag in ("dict", "object"):
        return any(has_opaque(v) for _, v in node["items" if tag == "dict" else "fields"])
    return False


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
