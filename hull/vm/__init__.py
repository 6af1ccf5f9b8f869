"""microVM isolation: QEMU microVMs with a guest kernel of their own.

Entry points: hull.vm.sandbox.run_in_vm (one process in a fresh VM, restored from a
warm-start template by default, cold-booted as the fallback), MicroVm (a running VM
whose agent takes requests) and hull.vm.supervisor (a detached VM container: runs
under hull-shim in the place of an OCI runtime, serves exec/signal/pause/stats on
vm.sock, client in hull.vm.control). Modules, bottom up: cpio (initramfs format),
kernel (Debian's cloud kernel from apt), agent (builds guest/hull-agent.c),
initramfs, rootdisk (erofs root disks), protocol (agent wire format: frames with
process ids), qmp (small QMP client for save/restore), qemu (process, QMP), accel
(KVM probe, else TCG), virtiofs (a virtiofsd per shared folder), microvm (cold boot,
restore, requests), template (warm-start templates), sandbox, guestnet (a VM's eth0
on a host tap and its /etc files, as the agent applies them), gueststats (the agent's
figures for `hull stats` and `top`), vmspec (what the engine hands a supervisor),
control, supervisor.
"""
