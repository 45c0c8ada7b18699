"""A stand-in for the writer thread that keeps what a TensorCapture hands it, in order."""

from __future__ import annotations

from recorder._sink import TensorItem


class ListSink:
    """Collects TensorItems in ``items``; tensor ids count up, as the writer thread's do,
    so they are the items' positions when puts come in id order."""

    def __init__(self) -> None:
        self.items: list[TensorItem] = []
        self._next = 0

    def next_tensor_id(self) -> int:
        self._next += 1
        return self._next - 1

    def put_tensor(self, item: TensorItem) -> None:
        self.items.append(item)
