"""fork_sibling(): fork a child that belongs to our parent (clone with CLONE_PARENT).

The container's init is forked by stage 1 (it must be: only children enter a new
pid namespace). As a sibling it is the runtime's own child from the start, so
the runtime waits for it without becoming a child subreaper, and so never needs
ctypes itself.

os.fork() cannot pass clone flags, so this is the raw clone syscall. That is
safe here because the caller (stage 1) is a forked, single-threaded process:
there is no other thread whose locks the child could inherit held, and Python's
own after-fork bookkeeping has nothing to reset.
"""

from __future__ import annotations

from hull.runtime.linux import syscalls as sc

CLONE_PARENT = 0x00008000
SIGCHLD = 17


def fork_sibling() -> int:
    """Like os.fork(), but the child's parent is our parent; returns 0 in the child."""
    # clone(flags, stack, ...): with a NULL stack the child runs on a copy of ours, as fork.
    return sc.syscall("clone", "clone", CLONE_PARENT | SIGCHLD, 0, 0, 0, 0)
