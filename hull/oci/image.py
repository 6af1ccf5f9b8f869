"""OCI image-spec v1.1 types: descriptors, manifests, indexes, configs, platforms.

Pure: no I/O. Everything here parses bytes that came from a registry or an
archive, so every field is checked for type and shape, and every problem is a
ConfigError that names the field. Docker's v2 schema2 manifests and manifest
lists are accepted as the OCI formats they were the model for; schema1 is not.
"""

from __future__ import annotations

import os

from hull.errors import ConfigError, NotFoundError
from hull.oci.digest import parse_digest, sha256_digest
from hull.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Media types (image-spec media-types.md; Docker's distribution manifest-v2-2.md).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST_V2})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SCHEMA1_TYPES = frozenset({DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED})
LAYER_TYPES = frozenset(
    {
        OCI_LAYER_TAR,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDIST_TAR,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER_TAR,
        DOCKER_LAYER_GZIP,
        DOCKER_FOREIGN_LAYER,
    }
)
# Accept headers a registry client sends: everything parse_manifest understands.
ACCEPTED_MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2)


# ---------------------------------------------------------------- platforms


@dataclass(frozen=True)
class Platform:
    """Where an image runs: os/architecture[/variant], e.g. linux/arm64/v8."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @classmethod
    def from_dict(cls, data: Any, where: str = "platform") -> Platform:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be an object")
        os_name = _require_str(data, "os", where)
        arch = _require_str(data, "architecture", where)
        variant = _optional_str(data, "variant", where)
        return cls(os_name, arch, variant or None)

    def to_dict(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "386": "386",
}
_KNOWN_OS = frozenset(
    {"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos"}
)


def _clean_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    """Spell an architecture as Go does (amd64, arm64, arm, 386) without dropping detail."""
    arch = arch.lower()
    variant = variant.lower() if variant else None
    if arch == "armhf":
        return "arm", variant or "v7"
    if arch == "armel":
        return "arm", variant or "v6"
    arch = _ARCH_ALIASES.get(arch, arch)
    if variant and variant.isdigit():
        variant = "v" + variant
    return arch, variant


def parse_platform(spec: str) -> Platform:
    """Parse "os/arch[/variant]" (or just "arch") as `--platform` takes it."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty platform: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    parts = spec.strip().lower().split("/")
    if any(not p for p in parts) or len(parts) > 3:
        raise ConfigError(f"invalid platform {spec!r}: expected OS/ARCH[/VARIANT]")
    if len(parts) == 1:
        if parts[0] in _KNOWN_OS:
            host = host_platform()
            return Platform(parts[0], host.architecture, host.variant)
        arch, variant = _clean_arch(parts[0], None)
        return Platform("linux", arch, variant)
    arch, variant = _clean_arch(parts[1], parts[2] if len(parts) == 3 else None)
    return Platform(parts[0], arch, variant)


def host_platform() -> Platform:
    """The platform of this machine: linux/amd64 on the usual build hosts."""
    machine = os.uname().machine.lower()  # what platform.machine() reads
    if machine.startswith("armv"):
        digits = "".join(ch for ch in machine[4:] if ch.isdigit())
        return Platform("linux", "arm", f"v{digits}" if digits else "v7")
    arch, variant = _clean_arch(machine or "amd64", None)
    return Platform("linux", arch, variant)


def normalize_platform(p: Platform) -> Platform:
    """Canonical form for comparison, as containerd's platforms.Normalize.

    amd64 v1 and arm64 v8 are the baselines and are written without a variant;
    plain arm means arm/v7.
    """
    arch, variant = _clean_arch(p.architecture, p.variant)
    baseline = (arch == "amd64" and variant == "v1") or (arch == "arm64" and variant == "v8")
    if baseline:
        variant = None
    elif arch == "arm" and variant is None:
        variant = "v7"
    return Platform(p.os.lower(), arch, variant)


def compatible_platforms(p: Platform) -> list[Platform]:
    """What a host of platform p runs, best first (containerd's platformVector)."""
    p = normalize_platform(p)
    out = [p]
    level = _variant_level(p.variant)
    if p.architecture == "amd64" and level:
        out += [Platform(p.os, "amd64", f"v{n}") for n in range(level - 1, 1, -1)]
        out.append(Platform(p.os, "amd64", None))
    elif p.architecture == "arm" and level:
        out += [Platform(p.os, "arm", f"v{n}") for n in range(level - 1, 4, -1)]
    elif p.architecture == "arm64":
        if p.variant:
            out.append(Platform(p.os, "arm64", None))
        out += [Platform(p.os, "arm", f"v{n}") for n in range(8, 4, -1)]
    return out


def _variant_level(variant: str | None) -> int:
    if variant and variant.startswith("v") and variant[1:].isdigit():
        return int(variant[1:])
    return 0


# -------------------------------------------------------------- descriptors


@dataclass
class Descriptor:
    """A typed, sized, digested reference to a blob (descriptor.md)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    urls: list[str] | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be an object")
        media_type = _require_str(data, "mediaType", where)
        digest = _require_str(data, "digest", where)
        try:
            parse_digest(digest)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        size = data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"{where}: size must be a non-negative integer, got {size!r}")
        platform = None
        if data.get("platform") is not None:
            platform = Platform.from_dict(data["platform"], f"{where}.platform")
        urls = data.get("urls")
        if urls is not None and (
            not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
        ):
            raise ConfigError(f"{where}: urls must be a list of strings")
        return cls(
            media_type,
            digest,
            size,
            annotations=_annotations(data, where),
            platform=platform,
            urls=urls,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        return out


# ----------------------------------------------------- manifests and indexes


@dataclass
class Manifest:
    """One image for one platform: a config blob and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] | None
    raw: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)


@dataclass
class Index:
    """A list of manifests, usually one per platform (image-index.md)."""

    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] | None
    raw: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)


def parse_manifest(raw: bytes, media_type: str | None) -> Manifest | Index:
    """Parse a manifest or index; media_type is the Content-Type if one was given."""
    declared = _clean_media_type(media_type)
    if declared in SCHEMA1_TYPES:
        raise ConfigError(
            f"unsupported manifest type {declared}: Docker schema1 images are deprecated; "
            "re-push the image with a current client"
        )
    doc = _load_json_object(raw, "manifest")
    if doc.get("schemaVersion") == 1 or "fsLayers" in doc:
        raise ConfigError(
            "unsupported manifest: Docker schema1 (schemaVersion 1) images are deprecated; "
            "re-push the image with a current client"
        )
    schema = doc.get("schemaVersion")
    if isinstance(schema, bool) or schema != 2:
        raise ConfigError(f"manifest: schemaVersion must be 2, got {schema!r}")
    inner = _optional_str(doc, "mediaType", "manifest")
    if inner and declared and inner != declared:
        raise ConfigError(
            f"manifest: mediaType {inner!r} does not match the content type {declared!r}"
        )
    kind = inner or declared or _guess_kind(doc)
    if kind in MANIFEST_TYPES:
        return _parse_image_manifest(doc, kind, raw)
    if kind in INDEX_TYPES:
        return _parse_index(doc, kind, raw)
    raise ConfigError(f"manifest: unsupported media type {kind!r}")


def _guess_kind(doc: dict[str, Any]) -> str:
    """No media type anywhere: the image-spec lets the fields tell (OCI only)."""
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    raise ConfigError("manifest: no mediaType and neither 'config' nor 'manifests' present")


def _parse_image_manifest(doc: dict[str, Any], kind: str, raw: bytes) -> Manifest:
    if "config" not in doc:
        raise ConfigError("manifest: missing required field 'config'")
    config = Descriptor.from_dict(doc["config"], "manifest.config")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise ConfigError("manifest: missing required field 'layers' (a list)")
    layers = [Descriptor.from_dict(d, f"manifest.layers[{i}]") for i, d in enumerate(layers_raw)]
    return Manifest(kind, config, layers, _annotations(doc, "manifest"), raw)


def _parse_index(doc: dict[str, Any], kind: str, raw: bytes) -> Index:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ConfigError("index: missing required field 'manifests' (a list)")
    manifests = [Descriptor.from_dict(d, f"index.manifests[{i}]") for i, d in enumerate(entries)]
    return Index(kind, manifests, _annotations(doc, "index"), raw)


def select_manifest(index: Index, platform: Platform) -> Descriptor:
    """Pick the manifest for platform, preferring an exact match, then compatible ones."""
    # Entries without a platform (or "unknown/unknown" attestations) never match.
    candidates = [(d, d.platform) for d in index.manifests if d.platform is not None]
    for wanted in compatible_platforms(platform):
        for desc, desc_platform in candidates:
            if normalize_platform(desc_platform) == wanted:
                return desc
    available = ", ".join(sorted({str(p) for _, p in candidates if p.os != "unknown"}))
    raise NotFoundError(
        f"no manifest for platform {platform} in the image index; available: {available or 'none'}"
    )


# ------------------------------------------------------------------- configs


@dataclass
class ImageConfig:
    """The parts of an image config a container is made from (config.md)."""

    raw: bytes
    architecture: str
    os: str
    config: dict[str, Any]
    rootfs_diff_ids: list[str]
    history: list[dict[str, Any]]
    created: str | None
    variant: str | None = None

    @property
    def digest(self) -> str:
        """The image ID, as Docker shows it."""
        return sha256_digest(self.raw)

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


_CONFIG_LIST_KEYS = ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild")
_CONFIG_STR_KEYS = ("WorkingDir", "User", "StopSignal")
_CONFIG_OBJ_KEYS = ("ExposedPorts", "Volumes", "Labels")


def parse_config(raw: bytes) -> ImageConfig:
    """Parse and check an OCI or Docker image config."""
    doc = _load_json_object(raw, "image config")
    architecture = _require_str(doc, "architecture", "image config")
    os_name = _require_str(doc, "os", "image config")
    variant = _optional_str(doc, "variant", "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise ConfigError("image config: missing required field 'rootfs'")
    if rootfs.get("type") != "layers":
        raise ConfigError(f"image config: rootfs.type must be 'layers', got {rootfs.get('type')!r}")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ConfigError("image config: rootfs.diff_ids must be a list")
    for i, d in enumerate(diff_ids):
        try:
            parse_digest(d)
        except ConfigError as exc:
            raise ConfigError(f"image config: rootfs.diff_ids[{i}]: {exc.message}") from None
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError("image config: 'config' must be an object")
    _check_run_config(config)
    history = doc.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ConfigError("image config: 'history' must be a list of objects")
    created = _optional_str(doc, "created", "image config")
    return ImageConfig(
        raw, architecture, os_name, config, list(diff_ids), history, created, variant or None
    )


def _check_run_config(config: dict[str, Any]) -> None:
    for key in _CONFIG_LIST_KEYS:
        value = config.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"image config: config.{key} must be a list of strings")
    for key in _CONFIG_STR_KEYS:
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"image config: config.{key} must be a string")
    for key in _CONFIG_OBJ_KEYS:
        value = config.get(key)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"image config: config.{key} must be an object")
    labels = config.get("Labels") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError("image config: config.Labels values must be strings")


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        parse_digest(diff_id)
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


# ------------------------------------------------------------------ helpers


def _clean_media_type(media_type: str | None) -> str | None:
    """A Content-Type without parameters; generic JSON types say nothing."""
    if not media_type:
        return None
    value = media_type.split(";", 1)[0].strip().lower()
    if value in ("", "application/json", "text/plain", "application/octet-stream"):
        return None
    return value


def _load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    import json  # here: not on `hull run`'s path, where images are already parsed

    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _require_str(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        raise ConfigError(f"{where}: missing required field '{key}'")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _optional_str(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


def _annotations(data: dict[str, Any], where: str) -> dict[str, str] | None:
    value = data.get("annotations")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where}: annotations must map strings to strings")
    return dict(value)


__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V2",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDIST_GZIP",
    "OCI_LAYER_NONDIST_TAR",
    "OCI_LAYER_NONDIST_ZSTD",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "Descriptor",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "chain_ids",
    "compatible_platforms",
    "host_platform",
    "normalize_platform",
    "parse_config",
    "parse_manifest",
    "parse_platform",
    "select_manifest",
]
