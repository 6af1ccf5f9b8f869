"""Garbage collection off while a command starts, on again once it waits.

A start allocates many objects (every import, the config, the request) and
frees almost none, so Python's young-generation passes over them find nothing:
~1 ms of `hull run` and ~0.2 ms of `hull-runtime run`, measured A/B. The
launchers call pause() first thing. What then waits on a container or a stream
calls resume() before it blocks, and `hull` resumes at once for every verb but
the start paths (hull.cli.main.GC_PAUSED_VERBS): a long-lived process collects
as usual. No `from __future__`: the launchers import this first.
"""

import gc


def pause() -> None:
    gc.disable()


def resume() -> None:
    """Collect again, leaving out what the start made (gc.freeze): those objects
    live as long as the process, and later passes need not walk them."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
