"""A per-step timeline of the engine: host time by phase against device time.

Off by default; `LLMEngine.profile = StepProfiler(device)` turns it on. Each step records
the host seconds spent in named phases (the time between consecutive `mark` calls is
charged to the phase named by the later call) and, on a GPU, CUDA events at the device-side
points that matter: forward start and end, sampling start and end. Event timestamps are
read after the run (`summary` synchronizes), so recording costs no device waits. On a CPU
the forward runs on the host: its wall time is the device time.

Reading a GPU timeline: `gap_before_sample` is time the device sat idle between a
forward's end and its sampling (waiting for the host to launch sampling, e.g. for grammar
masks); `gap_before_forward` is idle time between a sampling's end and the next forward.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

DEVICE_POINTS = ("forward_start", "forward_end", "sample_start", "sample_end")


@dataclass
class StepRecord:
    """One engine step: host seconds per phase, batch facts, and device events."""

    host: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    events: dict[str, torch.cuda.Event] = field(default_factory=dict)
    cpu_forward_seconds: float = 0.0
    num_seqs: int = 0
    num_tokens: int = 0
    num_masked: int = 0


class StepProfiler:
    """Collects `StepRecord`s; cheap enough to leave on for a whole benchmark run."""

    def __init__(self, device: torch.device) -> None:
        self.is_cuda = device.type == "cuda"
        self.records: list[StepRecord] = []
        self._current: StepRecord | None = None
        self._last = 0.0
        # Host time between one step's last mark and the next step's start (the caller's
        # loop: adding requests, reading outputs), and in Python's garbage collector.
        self.between_steps_seconds = 0.0
        self.gc_seconds = 0.0
        self.gc_collections = [0, 0, 0]  # per generation
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        """Stop counting garbage-collector time (the profiler is done)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_start
            self.gc_collections[info.get("generation", 0)] += 1

    def begin_step(self) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self.between_steps_seconds += now - self._last
        self._current = StepRecord()
        self.records.append(self._current)
        self._last = now

    def mark(self, phase: str) -> None:
        """Charge the host time since the previous mark to `phase`."""
        now = time.perf_counter()
        if self._current is not None:
            self._current.host[phase] += now - self._last
        self._last = now

    def device_point(self, name: str) -> None:
        """Record a CUDA event for `name` (one of DEVICE_POINTS) in the current stream."""
        if self.is_cuda and self._current is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._current.events[name] = event

    def note_batch(self, num_seqs: int, num_tokens: int) -> None:
        if self._current is not None:
            self._current.num_seqs = num_seqs
            self._current.num_tokens = num_tokens

    def note_masked(self, num_masked: int) -> None:
        if self._current is not None:
            self._current.num_masked += num_masked

    def note_cpu_forward(self, seconds: float) -> None:
        if self._current is not None:
            self._current.cpu_forward_seconds += seconds

    def summary(self, skip_empty: bool = True) -> dict[str, float]:
        """Median milliseconds per step: each host phase, host total (and its p99), device
        busy and the device's idle gaps (GPU), over the steps that ran a batch; totals over
        the run in seconds (keys ending in `_s`: each phase's, the host's, the device's),
        which show where steps slower than the median spent their time."""
        if self.is_cuda:
            torch.cuda.synchronize()
        steps = [r for r in self.records if r.num_seqs or not skip_empty]
        if not steps:
            return {}
        phases = sorted({p for r in steps for p in r.host})
        out: dict[str, float] = {"steps": float(len(steps)),
                                 "batch": statistics.median(r.num_seqs for r in steps)}
        for phase in phases:
            out[f"host_{phase}"] = 1e3 * statistics.median(r.host.get(phase, 0.0) for r in steps)
            out[f"host_{phase}_s"] = sum(r.host.get(phase, 0.0) for r in steps)
        # Steps that also prefill (more tokens than sequences) run without CUDA graphs.
        out["steps_with_prefill"] = float(sum(1 for r in steps if r.num_tokens > r.num_seqs))
        totals = sorted(sum(r.host.values()) for r in steps)
        out["host_total"] = 1e3 * statistics.median(totals)
        out["host_total_p99"] = 1e3 * totals[min(len(totals) - 1, int(0.99 * len(totals)))]
        out["host_total_s"] = sum(totals)
        out["between_steps_s"] = self.between_steps_seconds
        out["gc_s"] = self.gc_seconds
        out["gc_full_collections"] = float(self.gc_collections[2])
        if self.is_cuda:
            out.update(self._device_summary(steps))
        else:
            out["device_forward"] = 1e3 * statistics.median(r.cpu_forward_seconds for r in steps)
        return out

    def step_rows(self) -> list[dict[str, float]]:
        """One dict per step that ran a batch: host ms per phase, batch facts and (GPU)
        device ms of its forward and sampling, for looking at steps one by one."""
        if self.is_cuda:
            torch.cuda.synchronize()
        rows = []
        for r in self.records:
            if not r.num_seqs:
                continue
            row: dict[str, float] = {"seqs": r.num_seqs, "tokens": r.num_tokens,
                                     "masked": r.num_masked}
            row.update({f"host_{p}": 1e3 * s for p, s in r.host.items()})
            ev = r.events
            if all(p in ev for p in DEVICE_POINTS):
                row["device_forward"] = ev["forward_start"].elapsed_time(ev["forward_end"])
                row["device_sample"] = ev["sample_start"].elapsed_time(ev["sample_end"])
            elif not self.is_cuda:
                row["device_forward"] = 1e3 * r.cpu_forward_seconds
            rows.append(row)
        return rows

    def _device_summary(self, steps: list[StepRecord]) -> dict[str, float]:
        forward, sample, gap_sample, gap_forward, wall = [], [], [], [], []
        previous: StepRecord | None = None
        for r in steps:
            ev = r.events
            if all(p in ev for p in DEVICE_POINTS):
                forward.append(ev["forward_start"].elapsed_time(ev["forward_end"]))
                sample.append(ev["sample_start"].elapsed_time(ev["sample_end"]))
                gap_sample.append(ev["forward_end"].elapsed_time(ev["sample_start"]))
                if previous is not None and "sample_end" in previous.events:
                    gap_forward.append(
                        previous.events["sample_end"].elapsed_time(ev["forward_start"]))
                    wall.append(previous.events["forward_start"].elapsed_time(
                        ev["forward_start"]))
            previous = r
        out = {}
        for name, values in (("device_forward", forward), ("device_sample", sample),
                             ("gap_before_sample", gap_sample),
                             ("gap_before_forward", gap_forward), ("device_step", wall)):
            if values:
                out[name] = statistics.median(values)
        # Totals over the run (seconds): where the time went beyond the median step.
        out["device_busy_s"] = (sum(forward) + sum(sample)) / 1e3
        out["device_idle_s"] = (sum(gap_sample) + sum(gap_forward)) / 1e3
        return out


class NullProfiler:
    """The profiler the engine holds when profiling is off: every call does nothing."""

    def begin_step(self) -> None:
        pass

    def mark(self, phase: str) -> None:
        pass

    def device_point(self, name: str) -> None:
        pass

    def note_batch(self, num_seqs: int, num_tokens: int) -> None:
        pass

    def note_masked(self, num_masked: int) -> None:
        pass

    def note_cpu_forward(self, seconds: float) -> None:
        pass
