"""microVMs for real: QEMU boots Debian's cloud kernel with Hull's agent (TCG here).

Cold boots are few (about 2 s each under TCG): one VM serving several requests, one
fallback run. run_in_vm restores from a warm-start template by default, so most tests
run warm; each template (one per VM shape) is built once per session, about 3 s.
"""

from __future__ import annotations

import hashlib
import io
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hull.errors import CommandNotFoundError, HullError
from hull.paths import HullPaths
from tests.integration.engine_helpers import pids_with, require_vm_tools

MEMORY_MIB = 160


@pytest.fixture(scope="session")
def vm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One guest-asset cache (kernel, agent, initramfs) for the session, or a skip."""
    root = tmp_path_factory.mktemp("hull-vm")
    require_vm_tools()
    from hull.vm.sandbox import guest_assets

    try:
        guest_assets(HullPaths(root, root / "run"))
    except HullError as exc:
        pytest.skip(f"no guest kernel for microVMs: {exc.message}")
    return root


@pytest.fixture
def vm_paths(vm_root: Path, tmp_path: Path) -> HullPaths:
    runroot = tmp_path / "run"
    runroot.mkdir()
    return HullPaths(vm_root, runroot)


def qemu_pids_under(directory: Path) -> list[int]:
    return pids_with(b"qemu-system", str(directory))


def assert_nothing_left(paths: HullPaths) -> None:
    assert qemu_pids_under(paths.runroot) == []
    assert list((Path(paths.runroot) / "vm").iterdir()) == []
    templates = Path(paths.vm) / "templates"
    if templates.exists():  # only finished templates and their lock files
        for entry in templates.iterdir():
            assert entry.suffix == ".lock" or (entry / "complete").exists(), entry
            if entry.is_dir():
                assert sorted(p.name for p in entry.iterdir()) == [
                    "complete",
                    "meta.json",
                    "ram",
                    "state",
                ]


class Notices(list[str]):
    def __call__(self, message: str) -> None:
        self.append(message)

    @property
    def fell_back(self) -> bool:
        return any("warm start failed" in m for m in self)


def image_with(base: Path, where: Path, marker: str) -> Path:
    """A copy of the busybox rootfs with /marker saying which image it is."""
    shutil.copytree(base, where, symlinks=True)
    (where / "marker").write_text(marker + "\n")
    return where


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    paths: HullPaths
    notices: Notices


@pytest.fixture(scope="module")
def one_run(
    vm_root: Path, busybox_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Outcome:
    """One VM run whose output several tests look at."""
    from hull.vm.sandbox import run_in_vm

    runroot = tmp_path_factory.mktemp("run")
    paths = HullPaths(vm_root, runroot)
    notices = Notices()
    out, err = io.BytesIO(), io.BytesIO()
    script = (
        'uname -r; echo to-stderr >&2; echo "greeting=$GREETING"; echo "cwd=$(pwd)"; '
        "head -n1 /proc/meminfo; exit 3"
    )
    code = run_in_vm(
        busybox_template,
        ["sh", "-c", script],
        ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=grüß dich"],
        cwd="/etc",
        memory_mib=MEMORY_MIB,
        stdout=out,
        stderr=err,
        paths=paths,
        notice=notices,
    )
    return Outcome(code, out.getvalue().decode(), err.getvalue().decode(), paths, notices)


def test_run_in_vm_restores_from_a_template_by_default(one_run: Outcome) -> None:
    assert not one_run.notices.fell_back, one_run.notices
    from hull.vm.template import templates_dir

    assert any((d / "complete").exists() for d in templates_dir(one_run.paths.vm).iterdir())


def test_guest_runs_its_own_kernel(one_run: Outcome, vm_root: Path) -> None:
    guest_release = one_run.stdout.splitlines()[0]
    assert guest_release != platform.release()
    assert (
        guest_release
        == (next((vm_root / "vm" / "kernels").iterdir()) / "release").read_text().strip()
    )


def test_exit_code_passes_through(one_run: Outcome) -> None:
    assert one_run.code == 3
    assert not one_run.notices.fell_back


def test_stdout_and_stderr_are_kept_apart(one_run: Outcome) -> None:
    assert one_run.stderr == "to-stderr\n"
    assert "to-stderr" not in one_run.stdout


def test_env_and_cwd_apply(one_run: Outcome) -> None:
    assert "greeting=grüß dich\n" in one_run.stdout
    assert "cwd=/etc\n" in one_run.stdout


def test_guest_memory_follows_the_requested_size(one_run: Outcome) -> None:
    line = next(x for x in one_run.stdout.splitlines() if x.startswith("MemTotal:"))
    mem_kib = int(line.split()[1])
    # The kernel keeps its own image and reservations out of MemTotal.
    assert MEMORY_MIB * 1024 * 0.6 < mem_kib <= MEMORY_MIB * 1024


def test_run_leaves_no_qemu_and_no_disk(one_run: Outcome) -> None:
    assert_nothing_left(one_run.paths)


def test_one_vm_serves_several_requests(vm_paths: HullPaths, busybox_template: Path) -> None:
    from hull.vm.protocol import RunRequest
    from hull.vm.sandbox import MicroVm, guest_assets, pick_accel

    assets = guest_assets(vm_paths)
    with MicroVm.boot(vm_paths, assets, busybox_template, accel=pick_accel(vm_paths, assets)) as vm:
        out, err = io.BytesIO(), io.BytesIO()
        code = vm.run(RunRequest(["id"], uid=65534, gid=65534, gids=[5]), out, err)
        assert code == 0
        assert out.getvalue().decode().startswith("uid=65534(nobody) gid=65534(nogroup)")
        with pytest.raises(CommandNotFoundError):
            vm.run(RunRequest(["/no/such/program"]), out, err)
        assert vm.run(RunRequest(["sh", "-c", "kill -9 $$"]), out, err) == 137
        vm.poweroff()
        assert vm.qemu.process.poll() == 0  # the guest powered itself off cleanly
    assert_nothing_left(vm_paths)


class Interrupting(io.BytesIO):
    def write(self, data) -> int:  # type: ignore[override]
        raise KeyboardInterrupt


def test_interrupted_run_kills_qemu_and_removes_files(
    vm_paths: HullPaths, busybox_template: Path
) -> None:
    from hull.vm.sandbox import run_in_vm

    with pytest.raises(KeyboardInterrupt):
        run_in_vm(
            busybox_template,
            ["sh", "-c", "echo hello; sleep 30"],
            [],
            stdout=Interrupting(),
            paths=vm_paths,
        )
    assert_nothing_left(vm_paths)


def test_warm_guest_clock_is_current(vm_paths: HullPaths, busybox_template: Path) -> None:
    from hull.vm.sandbox import run_in_vm

    notices = Notices()
    out = io.BytesIO()
    code = run_in_vm(
        busybox_template,
        ["date", "+%s"],
        [],
        memory_mib=MEMORY_MIB,
        stdout=out,
        paths=vm_paths,
        notice=notices,
    )
    assert code == 0 and not notices.fell_back, notices
    assert abs(int(out.getvalue()) - time.time()) < 5
    assert_nothing_left(vm_paths)


def test_one_template_serves_different_images(
    vm_paths: HullPaths, busybox_template: Path, tmp_path: Path
) -> None:
    from hull.vm.sandbox import run_in_vm
    from hull.vm.template import templates_dir

    notices = Notices()
    seen = []
    for name in ("first", "second"):
        image = image_with(busybox_template, tmp_path / name, f"image-{name}")
        out = io.BytesIO()
        code = run_in_vm(
            image,
            ["cat", "/marker"],
            [],
            memory_mib=MEMORY_MIB,
            stdout=out,
            paths=vm_paths,
            notice=notices,
            # a chain ID caches the disk, as the engine does
            chain_id="sha256:" + hashlib.sha256(f"{tmp_path}{name}".encode()).hexdigest(),
        )
        assert code == 0
        seen.append(out.getvalue().decode().strip())
    assert seen == ["image-first", "image-second"]
    assert not notices.fell_back, notices
    complete = [d for d in templates_dir(vm_paths.vm).iterdir() if (d / "complete").exists()]
    assert complete, "no template was built"
    assert_nothing_left(vm_paths)


def test_a_new_vm_shape_builds_a_new_template(vm_paths: HullPaths, busybox_template: Path) -> None:
    from hull.vm.microvm import VmShape, guest_assets, pick_accel
    from hull.vm.sandbox import run_in_vm
    from hull.vm.template import find_template, template_key

    assets = guest_assets(vm_paths)
    accel = pick_accel(vm_paths, assets)
    odd = VmShape(accel, memory_mib=136)
    assert template_key(assets, odd) != template_key(assets, VmShape(accel, MEMORY_MIB))
    assert find_template(vm_paths, assets, odd) is None
    notices = Notices()
    out = io.BytesIO()
    code = run_in_vm(
        busybox_template,
        ["sh", "-c", "head -n1 /proc/meminfo"],
        [],
        memory_mib=136,
        stdout=out,
        paths=vm_paths,
        notice=notices,
    )
    assert code == 0 and not notices.fell_back, notices
    assert any("building a warm-start template" in m for m in notices)
    template = find_template(vm_paths, assets, odd)
    assert template is not None
    mem_kib = int(out.getvalue().split()[1])
    assert 136 * 1024 * 0.6 < mem_kib <= 136 * 1024
    assert_nothing_left(vm_paths)


def test_failed_warm_start_falls_back_to_a_cold_boot(
    vm_paths: HullPaths, busybox_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hull.vm.template
    from hull.vm.sandbox import run_in_vm

    def broken(*args: object, **kwargs: object) -> None:
        raise HullError("no template today")

    monkeypatch.setattr(hull.vm.template, "ensure_template", broken)
    notices = Notices()
    out, err = io.BytesIO(), io.BytesIO()
    code = run_in_vm(
        busybox_template,
        ["sh", "-c", "echo cold; exit 7"],
        [],
        stdout=out,
        stderr=err,
        paths=vm_paths,
        notice=notices,
    )
    assert (code, out.getvalue(), err.getvalue()) == (7, b"cold\n", b"")
    assert notices.fell_back and "no template today" in " ".join(notices)
    assert_nothing_left(vm_paths)
