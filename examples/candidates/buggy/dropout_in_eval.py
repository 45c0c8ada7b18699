"""Buggy Dropout: always drops, ignoring ``self.training``.

Where a replay must catch it: an eval-mode replay (where the reference Dropout is the
identity), at the FORWARD of the first Dropout called, ``pos_enc.drop`` (the source
embeddings). In a training-mode replay with the reference's RNG state restored it matches
the reference exactly, so it is invisible there.
"""

from torch import Tensor, nn
from torch.nn import functional as F


class AlwaysDropout(nn.Module):
    """nn.Dropout's signature; passes training=True to F.dropout unconditionally."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p, self.inplace = p, inplace

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=True, inplace=self.inplace)


CANDIDATES: dict[str, object] = {"torch.nn.Dropout": AlwaysDropout}
