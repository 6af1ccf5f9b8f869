"""`hull vm kernel build` for real: compile the lean guest kernel, then boot a guest on it.

A full build takes many minutes on two cores (CI has 20 for everything), so it only
runs when HULL_TEST_KERNEL_BUILD=1 asks for it.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from hull.errors import HullError
from hull.paths import HullPaths

pytestmark = pytest.mark.skipif(
    os.environ.get("HULL_TEST_KERNEL_BUILD") != "1",
    reason="builds a Linux kernel (many minutes): set HULL_TEST_KERNEL_BUILD=1 to run it",
)


def test_built_kernel_boots_a_guest_with_everything_built_in(
    tmp_path: Path, busybox_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hull.vm.kernel_build import (
        build_kernel,
        config_fragment,
        find_source,
        has_pvh_note,
        missing_symbols,
    )
    from hull.vm.sandbox import run_in_vm

    for tool in ("qemu-system-x86_64", "mkfs.erofs", "make", "flex", "bison"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    try:
        find_source()
    except HullError as exc:
        pytest.skip(exc.message)
    monkeypatch.delenv("HULL_VM_KERNEL", raising=False)
    paths = HullPaths(tmp_path / "lib", tmp_path / "run")
    Path(paths.runroot).mkdir(parents=True)
    kernel = build_kernel(paths.vm)
    assert has_pvh_note(kernel.vmlinux.read_bytes())
    assert kernel.release.endswith("-hull")
    assert missing_symbols(config_fragment(), (kernel.directory / "config").read_text()) == []
    assert build_kernel(paths.vm).directory == kernel.directory  # cached

    out = io.BytesIO()
    code = run_in_vm(
        busybox_template,
        ["sh", "-c", "uname -r; cat /proc/filesystems"],
        [],
        stdout=out,
        stderr=io.BytesIO(),
        paths=paths,
        warm=False,  # a cold boot of the new kernel (a template is tested elsewhere)
    )
    lines = out.getvalue().decode().splitlines()
    assert code == 0
    assert lines[0] == kernel.release
    filesystems = {line.split()[-1] for line in lines[1:]}
    assert {"erofs", "overlay", "ext4", "tmpfs", "virtiofs"} <= filesystems
