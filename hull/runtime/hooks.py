"""OCI hooks: run each with the container state JSON on stdin.

prestart/createRuntime/createContainer/startContainer failures abort the
container; poststart/poststop failures are only warned about (runtime-spec
"Lifecycle").
"""

from __future__ import annotations

import os
import subprocess

from hull.errors import HullError

FATAL_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer")


class HookError(HullError):
    """A hook failed, timed out, or could not be run."""


def run_hooks(hooks: list[dict], kind: str, state_json: str) -> None:
    for hook in hooks:
        try:
            run_hook(hook, kind, state_json)
        except HookError as err:
            if kind in FATAL_KINDS:
                raise
            os.write(2, f"hull-runtime: warning: {err.message}\n".encode())


def run_hook(hook: dict, kind: str, state_json: str) -> None:
    path = hook["path"]
    args = hook.get("args") or [path]
    env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
    timeout = hook.get("timeout")
    try:
        proc = subprocess.Popen(
            args,
            executable=path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=None,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
    except OSError as err:
        raise HookError(f"{kind} hook {path}: {err.strerror}") from None
    try:
        _, err_out = proc.communicate(state_json.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise HookError(f"{kind} hook {path} timed out after {timeout}s") from None
    if proc.returncode != 0:
        detail = err_out.decode(errors="replace").strip()
        raise HookError(
            f"{kind} hook {path} exited with status {proc.returncode}"
            + (f": {detail}" if detail else "")
        )
