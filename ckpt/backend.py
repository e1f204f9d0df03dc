"""The array backend handle: numpy on the CPU, cupy on an NVIDIA GPU.

Ops are written once against `backend.xp`; nothing else in ckpt imports cupy. The handle also gives
synchronisation (for honest timing) and the allocator meter (the backend's own high-water mark).
"""

import os
import time
import tracemalloc

import numpy as np

from .errors import ConfigError


class Backend:
    name = "cpu"

    def __init__(self):
        self.xp = np

    def asarray(self, host_array):
        return self.xp.asarray(host_array)

    def to_host(self, array):
        return np.asarray(array)

    def memory_bytes(self):
        """Physical memory of the machine (0 when unknown)."""
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 0

    def sync(self):
        """Wait for queued work; a no-op on the CPU."""

    def clock(self):
        self.sync()
        return time.perf_counter()

    # The allocator meter: numpy reports its buffers to tracemalloc.
    def meter_start(self):
        if not tracemalloc.is_tracing():
            tracemalloc.start()
        tracemalloc.reset_peak()

    def meter_reset(self):
        tracemalloc.reset_peak()

    def meter_peak(self):
        return tracemalloc.get_traced_memory()[1]

    def meter_stop(self):
        tracemalloc.stop()


class CupyBackend(Backend):
    name = "cuda"

    def __init__(self, cupy):
        self.xp = cupy
        pool = self._pool = cupy.get_default_memory_pool()

        class PeakHook(cupy.cuda.MemoryHook):
            """The pool's bytes in use at every allocation: a true high-water mark, temporaries
            inside ops included (sampling between steps would miss them)."""

            name = "ckpt-peak"

            def __init__(self):
                self.peak = pool.used_bytes()

            def malloc_postprocess(self, **kwargs):
                self.peak = max(self.peak, pool.used_bytes())

        self._hook = PeakHook()

    def to_host(self, array):
        return self.xp.asnumpy(array)

    def memory_bytes(self):
        return self.xp.cuda.Device().mem_info[1]

    def sync(self):
        self.xp.cuda.get_current_stream().synchronize()

    def meter_start(self):
        self._hook.peak = self._pool.used_bytes()
        self._hook.__enter__()

    def meter_reset(self):
        self._hook.peak = self._pool.used_bytes()

    def meter_peak(self):
        return self._hook.peak

    def meter_stop(self):
        self._hook.__exit__(None, None, None)


def get_backend(device):
    if device == "cpu":
        return Backend()
    if device == "cuda":
        try:
            import cupy
        except ImportError:
            raise ConfigError("--device cuda needs cupy: pip install 'ckpt-recompute[cuda12]'") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise ConfigError("--device cuda: no GPU is available on this machine")
        except cupy.cuda.runtime.CUDARuntimeError:
            raise ConfigError("--device cuda: no GPU is available on this machine") from None
        return CupyBackend(cupy)
    raise ConfigError(f"unknown device {device!r}: use cpu or cuda")
