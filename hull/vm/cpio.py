"""A cpio "newc" archive writer, the format the Linux kernel unpacks as initramfs.

Written here rather than calling cpio(1) so that the archive is byte-for-byte
reproducible (fixed inode numbers, mtimes and owners): the initramfs is cached by
the hash of its inputs, and a rebuild must not change a VM template's identity.
"""

from __future__ import annotations

import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Collects entries in memory and renders one newc archive.

    Parent directories must be added before their children (the kernel creates
    entries in archive order and does not make missing parents).
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._next_ino = 1
        self._names: set[str] = set()

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._add(name, stat.S_IFDIR | mode, b"", nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def _add(
        self,
        name: str,
        mode: int,
        data: bytes,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"cpio entry name {name!r} is empty or repeated")
        self._names.add(name)
        self._chunks.append(self._entry(name, mode, data, nlink, rdev))

    def _entry(self, name: str, mode: int, data: bytes, nlink: int, rdev: tuple[int, int]) -> bytes:
        encoded = name.encode() + b"\0"
        ino = self._next_ino
        self._next_ino += 1
        fields = (
            ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime: fixed, for reproducible archives
            len(data),
            0,  # dev major
            0,  # dev minor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check (unused by newc)
        )
        header = MAGIC + b"".join(b"%08X" % value for value in fields)
        head = header + encoded
        return head + _pad4(len(head)) + data + _pad4(len(data))

    def render(self) -> bytes:
        """The archive: every entry, then the trailer, padded to 512 bytes."""
        trailer = CpioWriter()
        trailer._next_ino = 0
        end = trailer._entry(TRAILER, 0, b"", 1, (0, 0))
        body = b"".join(self._chunks) + end
        return body + b"\0" * (-len(body) % 512)
