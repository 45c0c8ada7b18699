"""Buggy Dropout: always drops, ignoring ``self.training``.

Where a replay must catch it: in eval-mode calls (where the reference Dropout is the
identity), at the FORWARD of the first Dropout called, ``pos_enc.drop`` (the source
embeddings). The example recipe's step 1 is a validation step in eval mode, so a two-step
trace catches it there. In training-mode calls, with the reference's RNG state restored, it
matches the reference exactly, so it is invisible in step 0.
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
