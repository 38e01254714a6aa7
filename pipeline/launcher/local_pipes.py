"""A ``PipesSubprocessClient`` that keeps the tail of the process's stderr for the failure.

Dagster's client either lets the child inherit stderr (nothing to quote when it fails) or pipes
it without reading it (a chatty trainer fills the pipe and hangs). This one reads stderr in a
thread, passes every line on to our own stderr (so Dagster's compute logs still stream it live)
and keeps the last lines, which go into the error when the launch fails. A training run that
dies on rank 3 after hours then says why on the run page, not only in a log file somewhere.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO

import dagster as dg

TAIL_LINES = 50


class LaunchFailed(dg.Failure):
    """The launched process exited non-zero; ``stderr_tail`` holds its last stderr lines."""

    def __init__(self, command: Sequence[str], returncode: int, stderr_tail: str) -> None:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        cause = probable_cause(stderr_tail)
        super().__init__(
            description=(
                f"launched process failed ({how}){': ' + cause if cause else ''}\n"
                f"command: {' '.join(command)}\n"
                f"--- last {TAIL_LINES} lines of stderr ---\n{stderr_tail}"
            ),
            metadata={
                "exit_code": returncode,
                "command": " ".join(command),
                "stderr_tail": dg.MetadataValue.text(stderr_tail),
            },
        )
        self.returncode = returncode
        self.stderr_tail = stderr_tail


_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt)):\s*(\S.*)$")


#: What the launchers raise about a failed child; the child's own error is the one to quote.
_LAUNCHER_ERRORS = ("ChildFailedError", "CalledProcessError")


def probable_cause(text: str) -> str | None:
    """The last ``SomeError: message`` line of a log that is not the launcher's own wrapper.

    torchrun ends every failure with ``ChildFailedError`` (accelerate's single-process launch
    with ``CalledProcessError``); the rank's own exception (``RuntimeError: CUDA out of
    memory ...``) is the line a reader wants first.
    """
    for line in reversed(text.splitlines()):
        match = _EXCEPTION_LINE.match(line)
        if match and not match.group(1).endswith(_LAUNCHER_ERRORS):
            return f"{match.group(1)}: {match.group(3)}".strip()
    return None


def _pump(source: IO[bytes], sink: IO[str], tail: deque[str]) -> None:
    for raw in iter(source.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        tail.append(line.rstrip("\n"))
        try:
            sink.write(line)
            sink.flush()
        except (OSError, ValueError):  # our stderr went away: keep draining the pipe
            pass
    source.close()


class TailingPipesSubprocessClient(dg.PipesSubprocessClient):
    """``PipesSubprocessClient`` whose failures carry the last lines of the child's stderr."""

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        command: Sequence[str],
        extras: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with dg.open_pipes_session(
            context=context,
            context_injector=self.context_injector,
            message_reader=self.message_reader,
            extras=extras,
        ) as session:
            process = subprocess.Popen(
                list(command),
                cwd=cwd or self.cwd,
                env={
                    **os.environ,
                    **self.env,
                    **(env or {}),
                    **session.get_bootstrap_env_vars(),
                },
                stderr=subprocess.PIPE,
            )
            assert process.stderr is not None
            pump = threading.Thread(
                target=_pump, args=(process.stderr, sys.stderr, tail), daemon=True
            )
            pump.start()
            try:
                process.wait()
            except dg.DagsterExecutionInterruptedError:
                if self.forward_termination:
                    context.log.info("[pipes] execution interrupted, sending SIGINT to launch")
                    process.send_signal(signal.SIGINT)
                    process.wait(timeout=self.termination_timeout_seconds)
                raise
            finally:
                pump.join(timeout=10)
            if process.returncode != 0:
                raise LaunchFailed(command, process.returncode, "\n".join(tail))
        return dg.PipesClientCompletedInvocation(session)
