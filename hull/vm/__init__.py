"""microVM isolation: QEMU microVMs with a guest kernel of their own.

Entry point: hull.vm.sandbox.run_in_vm (one process in a fresh VM) and MicroVm (a
booted VM whose agent takes requests). Modules, bottom up: cpio (initramfs format),
kernel (Debian's cloud kernel from apt), agent (builds guest/hull-agent.c), initramfs,
rootdisk (erofs root disks), protocol (agent wire format), qemu (process, QMP),
accel (KVM probe, else TCG), sandbox.
"""
