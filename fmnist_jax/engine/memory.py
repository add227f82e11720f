"""Device memory of a run: what its compiled training call needs, per run of the run axis, and
whether it fits the device, checked before the first epoch (a sweep too large fails there)."""

from __future__ import annotations

import dataclasses

import jax

from fmnist_jax.errors import UserError

_MIB = 2**20
# Of a CPU's available memory, what a run may plan to use (the rest: Python, the data loading).
_HOST_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes one compiled training call needs, split into the data (shared by every run) and each
    run's part, against what the device offers."""

    needed: int
    shared: int
    num_runs: int
    available: int | None  # None: the device does not say

    @property
    def per_run(self) -> float:
        return max(self.needed - self.shared, 0) / self.num_runs

    def runs_that_fit(self) -> int | None:
        if self.available is None:
            return None
        return max(int((self.available - self.shared) // max(self.per_run, 1.0)), 0)

    def describe(self) -> str:
        fit = self.runs_that_fit()
        room = (
            ""
            if fit is None
            else f"; the device offers {self.available / _MIB:,.0f} MiB: {fit:,} runs fit"
        )
        return (
            f"{self.needed / _MIB:,.1f} MiB for {self.num_runs} run(s) ({self.per_run / _MIB:,.2f} MiB "
            f"per run + {self.shared / _MIB:,.1f} MiB of training data){room}"
        )

    def check(self, num_seeds: int) -> None:
        """Raises `UserError`, saying how many members fit, when the runs need more than the device has."""
        fit = self.runs_that_fit()
        if fit is None or fit >= self.num_runs:
            return
        raise UserError(
            f"This run does not fit the device: its training program needs {self.describe()}. "
            f"With {num_seeds} seed(s) per member, at most {fit // num_seeds} member(s) fit: sweep "
            "fewer values or seeds (or split the grid into several sweeps), or use a device with "
            "more memory. Nothing was trained."
        )


def available(device: jax.Device) -> int | None:
    """The bytes `device` can hold: an accelerator's allocator limit, a CPU's share of the host's
    available memory (Linux), else None."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    return int(kib * 1024 * _HOST_SHARE)
