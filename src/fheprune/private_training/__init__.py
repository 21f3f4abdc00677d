"""Private training with encrypted data pruning (HETAL-style transfer learning + HEPrune).

A client extracts features with a public, frozen extractor (:mod:`.features`), encrypts them
and trains a softmax classifier on a server that sees only ciphertexts (:mod:`.trainer`). The
kernels (:mod:`.kernels`) run on the CKKS engine or on a cleartext simulator with the same
levels and operation counts (:mod:`.backend`); slots are laid out as in :mod:`.layout`, the
softmax is approximated as in :mod:`.softmax`. See docs/private-training.md.
"""

from typing import Literal

# The protocol's choices, here so that the command line can offer them without loading the
# engine.
Mode = Literal["heprune", "private"]
MODES: tuple[str, ...] = ("heprune", "private")
Score = Literal["hefs", "logits"]
SCORES: tuple[str, ...] = ("hefs", "logits")
