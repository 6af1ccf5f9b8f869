"""Where an unpacked layer lives, and whether its unpack finished.

Shared by LayerStore (hull.image.layers) and the engine's mount path, which
only needs to find finished layers and should not import the unpacker (nor
pathlib: paths here are str, see hull.paths).
"""

from __future__ import annotations

import os

from hull.oci.digest import parse_digest

MARKER = "complete"  # written last by an unpack: its presence means the layer is whole


def layer_dir(root: str | os.PathLike[str], chain_id: str) -> str:
    """<root>/layers/<hex of the chain ID>; the digest is checked, so no path tricks."""
    return os.path.join(root, "layers", parse_digest(chain_id)[1])


def layer_is_complete(root: str | os.PathLike[str], chain_id: str) -> bool:
    return os.path.isfile(os.path.join(layer_dir(root, chain_id), MARKER))
