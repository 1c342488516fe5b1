"""Kernel launch with resource limits: a memory bomb costs its own cell, not the grading machine.

``LimitedKernelManager`` is jupyter_client's ``AsyncKernelManager`` whose kernel process gets
POSIX resource limits (``setrlimit`` in the child between fork and exec):

- ``RLIMIT_DATA`` (heap and private anonymous memory) = ``memory_limit_mb``. Unlike ``RLIMIT_AS``
  it does not count address space that torch and glibc only *reserve*, so a normal notebook using
  torch runs under a limit a few times its real use, while ``bytearray(10**11)`` or an ever-growing
  list raises ``MemoryError`` inside the student's cell (the kernel survives).
- ``RLIMIT_CPU`` = ``cpu_limit_s`` (0: none): a backstop against a kernel that outlives every
  wall-clock limit (the kernel gets SIGXCPU and dies; the executor reports it).
- ``RLIMIT_CORE`` = 0: a crashing kernel leaves no core dump in the course directory.
"""
from __future__ import annotations

import functools
import typing as t

from jupyter_client.manager import AsyncKernelManager
from traitlets import Integer

__all__ = ["LimitedKernelManager", "apply_limits"]


def apply_limits(memory_limit_mb: int, cpu_limit_s: int = 0) -> None:
    """Set the resource limits of the current process (called in the kernel's child process)."""
    import resource

    if memory_limit_mb and memory_limit_mb > 0:
        limit = int(memory_limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if cpu_limit_s and cpu_limit_s > 0:
        # soft limit -> SIGXCPU (terminates); hard limit a little later -> SIGKILL
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_limit_s), int(cpu_limit_s) + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class LimitedKernelManager(AsyncKernelManager):
    """An ``AsyncKernelManager`` whose kernels run under memory and CPU-time limits."""

    memory_limit_mb = Integer(
        3072, help="Heap limit (RLIMIT_DATA) of the kernel process in MiB; 0 for none."
    ).tag(config=True)
    cpu_limit_s = Integer(0, help="CPU-time limit (RLIMIT_CPU) of the kernel in seconds; 0 for none.").tag(config=True)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: t.Any) -> None:
        kw["preexec_fn"] = functools.partial(apply_limits, self.memory_limit_mb, self.cpu_limit_s)
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    _launch_kernel = _async_launch_kernel
