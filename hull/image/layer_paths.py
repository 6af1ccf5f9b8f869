"""Where an unpacked layer lives, and whether its unpack finished.

Shared by LayerStore (hull.image.layers) and the engine's mount path, which
only needs to find finished layers and should not import the unpacker.
"""

from __future__ import annotations

from pathlib import Path

from hull.oci.digest import parse_digest

MARKER = "complete"  # written last by an unpack: its presence means the layer is whole


def layer_dir(root: Path, chain_id: str) -> Path:
    """<root>/layers/<hex of the chain ID>; the digest is checked, so no path tricks."""
    return Path(root) / "layers" / parse_digest(chain_id)[1]


def layer_is_complete(root: Path, chain_id: str) -> bool:
    return (layer_dir(root, chain_id) / MARKER).is_file()
