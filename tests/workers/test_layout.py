"""The worker's layout for the device it finds (workers/layout.py)."""

from __future__ import annotations

from workers.layout import GPU_PROCESSES_MAX, Layout, worker_layout


def test_a_cpu_host_runs_one_single_threaded_process_per_core() -> None:
    assert worker_layout("cpu", host_cores=2) == Layout(2, 1, 1)
    # One process on two cores: torch's own threads, and both cores verify its pairs.
    assert worker_layout("cpu", 1, host_cores=2) == Layout(1, 0, 2)


def test_a_gpu_host_shares_its_gpu_between_processes() -> None:
    assert worker_layout("cuda", host_cores=16) == Layout(16, 1, 1)
    assert worker_layout("cuda", host_cores=4 * GPU_PROCESSES_MAX).processes == GPU_PROCESSES_MAX
    assert worker_layout("cuda", host_cores=4 * GPU_PROCESSES_MAX).verify_threads == 4
    assert worker_layout("cuda", 4, host_cores=16) == Layout(4, 1, 4)


def test_explicit_settings_win() -> None:
    assert worker_layout("cuda", 2, torch_threads=3, verify_threads=5, host_cores=16) == Layout(
        2, 3, 5
    )
