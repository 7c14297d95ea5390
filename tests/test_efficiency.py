"""How busy the machine was while something was timed: /proc/stat's busy ticks less this process's CPU time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdrepro.benchmark import contention_line
from kdrepro.efficiency import CPUContention, machine_busy_seconds

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def write_stat(path: Path, user: int, idle: int) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice; then per-core lines
    path.write_text(f"cpu  {user} 5 7 {idle} 11 2 3 1 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\n")


def test_busy_seconds_add_the_busy_fields_and_leave_idle_and_iowait_out(tmp_path):
    write_stat(tmp_path / "stat", user=100, idle=10_000)
    assert machine_busy_seconds(tmp_path / "stat") == pytest.approx((100 + 5 + 7 + 2 + 3 + 1) / TICK)
    assert machine_busy_seconds(tmp_path / "absent") != machine_busy_seconds(tmp_path / "absent")  # NaN


def test_other_cores_are_the_machines_busy_time_less_this_process_over_the_wall_time(tmp_path):
    stat = tmp_path / "stat"
    write_stat(stat, user=100, idle=10_000)
    with CPUContention(stat) as contention:
        started, own = time.perf_counter(), time.process_time()
        time.sleep(0.3)
        wall = time.perf_counter() - started
        own = time.process_time() - own
        write_stat(stat, user=100 + round(1.5 * wall * TICK), idle=10_000)  # others: 1.5 cores meanwhile
    assert contention.other_cores == pytest.approx(1.5 - own / wall, abs=0.1)


def test_a_process_spinning_beside_the_block_reads_as_about_one_core():
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this system")
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
    assert "not measurable" in contention_line(float("nan"))
