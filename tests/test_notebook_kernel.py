"""Chapters run in kernels that cannot meet: each on its own IPC socket path, whatever starts beside it."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import papermill
import pytest

from kdrepro.notebook_kernel import PrivateSocketKernelManager

pytestmark = pytest.mark.skipif(os.name == "nt", reason="Windows has no IPC transport: kernels keep TCP there")


def test_each_kernel_manager_gets_its_own_socket_path_in_the_temporary_folder():
    first, second = PrivateSocketKernelManager(), PrivateSocketKernelManager()
    assert first.transport == second.transport == "ipc"
    assert first.ip != second.ip and Path(first.ip).parent == Path(second.ip).parent
    assert len(first.ip) + len("-65535") < 107  # a Unix socket path's limit


def kernel_pid(notebook: str, output: str) -> int:
    tempfile.tempdir = str(Path(output).parent)  # this worker process's sockets go beside its output
    executed = papermill.execute_notebook(notebook, output, kernel_name="python3", progress_bar=False,
                                          kernel_manager_class=PrivateSocketKernelManager)
    return int(executed.cells[0].outputs[0]["text"])


def test_notebooks_started_together_each_run_in_a_kernel_of_their_own(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.getpid())")])
    nbformat.write(notebook, tmp_path / "pid.ipynb")
    outputs = [str(tmp_path / f"out{i}.ipynb") for i in range(3)]
    with ProcessPoolExecutor(3) as pool:  # three drivers starting their kernels at the same instant
        pids = list(pool.map(kernel_pid, [str(tmp_path / "pid.ipynb")] * 3, outputs))
    assert len(set(pids)) == 3, f"two notebooks ran in one kernel: {pids}"
    assert not list(tmp_path.glob("kdrepro-kernel-*")), "a kernel's socket files were left behind"
