"""A stand-in for the writer thread that keeps what a TensorCapture hands it, in order."""

from __future__ import annotations

from recorder._sink import TensorItem


class ListSink:
    """Collects TensorItems in ``items``; tensor ids are their positions."""

    def __init__(self) -> None:
        self.items: list[TensorItem] = []

    def next_tensor_id(self) -> int:
        return len(self.items)

    def put_tensor(self, item: TensorItem) -> None:
        self.items.append(item)
