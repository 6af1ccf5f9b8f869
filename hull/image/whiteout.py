"""The OCI whiteout names and overlayfs's opaque xattr, shared by unpack and diff.

A module of its own so that mounting a container's overlay (hull.image.snapshots,
on `hull run`'s path) need not import the layer unpacker and its tarfile.
"""

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
