"""How busy the machine was while something was timed: the system's busy CPU time less this process's."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import namedtuple

import psutil
import pytest

from kdrepro import efficiency
from kdrepro.benchmark import contention_line, host_gemm_gflops, host_line
from kdrepro.efficiency import CPUContention, machine_busy_seconds

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_busy_seconds_leave_idle_io_wait_and_the_guest_times_inside_user_out(monkeypatch):
    monkeypatch.setattr(psutil, "cpu_times", lambda: Times(100.0, 5, 7, 10_000, 11, 2, 3, 1, 40, 4))
    assert machine_busy_seconds() == pytest.approx(100 + 5 + 7 + 2 + 3 + 1)


def test_other_cores_are_the_machines_busy_time_less_this_process_over_the_wall_time(monkeypatch):
    machine = [1000.0]  # the machine's busy seconds, as the next reading will find them
    monkeypatch.setattr(efficiency, "machine_busy_seconds", lambda: machine[-1])
    with CPUContention() as contention:
        started, own = time.perf_counter(), time.process_time()
        time.sleep(0.3)
        wall, own = time.perf_counter() - started, time.process_time() - own
        machine.append(1000.0 + 1.5 * wall + own)  # others: 1.5 cores meanwhile, plus this process's own time
    assert contention.other_cores == pytest.approx(1.5, abs=0.1)


def test_a_process_spinning_beside_the_block_reads_as_about_one_core():
    with CPUContention() as idle:
        time.sleep(0.5)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start
        with CPUContention() as loaded:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert loaded.other_cores > idle.other_cores + 0.6, (idle.other_cores, loaded.other_cores)


def test_the_benchmark_warns_when_its_figures_were_measured_beside_other_work():
    assert "an idle machine" in contention_line(0.05)
    assert contention_line(1.0).startswith("WARNING: other processes kept 1.00 cores busy")


def test_the_benchmark_states_the_host_speed_beside_its_figures():
    gflops = host_gemm_gflops(size=64, repeats=2)
    assert 0.01 < gflops < 1e5, gflops
    assert host_line(80.0, 2).startswith("host: fp32 GEMM at 80 GFLOPS on 2 thread(s) (40 a thread)")
