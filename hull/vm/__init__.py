"""microVM isolation: QEMU microVMs with a guest kernel of their own.

Entry point: hull.vm.sandbox.run_in_vm (one process in a fresh VM, restored from a
warm-start template by default, cold-booted as the fallback) and MicroVm (a running
VM whose agent takes requests). Modules, bottom up: cpio (initramfs format), kernel
(Debian's cloud kernel from apt), agent (builds guest/hull-agent.c), initramfs,
rootdisk (erofs root disks), protocol (agent wire format), qmp (small QMP client for
save/restore), qemu (process, QMP), accel (KVM probe, else TCG), microvm (cold boot,
restore, requests), template (warm-start templates), sandbox.
"""
