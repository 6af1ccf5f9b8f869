"""The registry client: pull images into the content store, push them out.

    from hull.image.registry import RegistryClient, pull, push
    result = pull("busybox", store)             # mirrors from $HULL_REGISTRY_MIRRORS
    push("127.0.0.1:5000/me/busybox:1", store, result.manifest_digest)

Credentials come from a docker-style config.json (see credentials.py), written by
`hull login`. Heavy pieces (rich) load only when used.
"""

from __future__ import annotations

from hull.image.registry.client import FetchedManifest, RegistryClient, Repository
from hull.image.registry.credentials import (
    Credentials,
    erase_credentials,
    load_credentials,
    store_credentials,
)
from hull.image.registry.errors import (
    RegistryAuthError,
    RegistryContentError,
    RegistryDeniedError,
    RegistryError,
    RegistryNotFoundError,
    RegistryUnreachableError,
)
from hull.image.registry.pull import PullResult, pull
from hull.image.registry.push import PushResult, push

__all__ = [
    "Credentials",
    "FetchedManifest",
    "PullResult",
    "PushResult",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryContentError",
    "RegistryDeniedError",
    "RegistryError",
    "RegistryNotFoundError",
    "RegistryUnreachableError",
    "Repository",
    "erase_credentials",
    "load_credentials",
    "pull",
    "push",
    "store_credentials",
]
