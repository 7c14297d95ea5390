"""The Jupyter kernel manager every chapter runs under: one private socket path per kernel, no TCP ports.

jupyter_client gives a kernel its TCP ports by binding free ones and releasing them before the kernel
binds them itself, so two notebooks started in the same instant can draw the same ports (papermill#511).
That happened here: of two ``--fill`` processes started together, the second's planning pass enumerated
0 of its chapter's 21 fits and reported nothing missing. Kernels talking over IPC sockets at a path
unique to each kernel cannot meet, whatever else starts beside them (fills, renders, the test suite), and
nothing listens on the network. Windows has no IPC transport and keeps TCP.
"""

from __future__ import annotations

import os
import tempfile
import uuid

from jupyter_client import AsyncKernelManager
from traitlets import default


class PrivateSocketKernelManager(AsyncKernelManager):
    """An :class:`AsyncKernelManager` whose kernel listens on ``<tmp>/kdrepro-kernel-<random>-<n>`` sockets.

    Pass it as ``papermill.execute_notebook(..., kernel_manager_class=PrivateSocketKernelManager)``;
    jupyter_client removes the socket files when the kernel shuts down.
    """

    @default("transport")
    def _default_transport(self) -> str:
        return "tcp" if os.name == "nt" else "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        if self.transport != "ipc":
            return super()._ip_default()
        # Short on purpose: a Unix socket path has at most 107 bytes, and macOS's $TMPDIR is long already.
        return os.path.join(tempfile.gettempdir(), f"kdrepro-kernel-{uuid.uuid4().hex[:12]}")
