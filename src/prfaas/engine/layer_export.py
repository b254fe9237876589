"""A streamed prefill's layers, copied to host memory without stalling the forward pass.

``LayerExport`` is the per-layer hook of one step (``Engine._layer_export``). After layer ``i``
has run, each streamed request's layer-``i`` tensors are read (``LayerReader``: fresh copies
on the compute device) and copied to host memory:

- on a CPU the read is already in host memory: the layer goes to its sink at once;
- on an accelerator each tensor is copied into a fresh pinned host buffer with a
  non-blocking copy queued behind the layer's kernels on the current stream, and an event is
  recorded after the copies. The forward pass goes on at once. Layers whose event has
  completed are handed to their sinks (in layer order) whenever a later layer finishes;
  ``finish``, after the forward pass, waits for the rest: one wait per step at most, where a
  synchronous ``.cpu()`` per layer waited for every layer's kernels in turn.

A sink thus always gets host tensors whose copy has completed, in layer order, each layer
once, all within the step (the ``LayerSink`` contract). Buffers are never reused: a sink may
keep views of them (a sender keeps each layer until the transfer is acknowledged).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import torch

from prfaas.engine.runner import LayerReader, NamedTensors


class Sink(Protocol):
    def layer(self, layer_index: int, tensors: NamedTensors) -> None: ...


class HostCopy(Protocol):
    """Copies tensors to host memory; ``start`` returns a handle ``done`` and ``wait`` take."""

    def start(self, tensors: NamedTensors) -> tuple[NamedTensors, Any]: ...
    def done(self, handle: Any) -> bool: ...
    def wait(self, handle: Any) -> None: ...


class ImmediateCopy:
    """CPU tensors are host memory already (the reader returned fresh copies)."""

    def start(self, tensors: NamedTensors) -> tuple[NamedTensors, Any]:
        return tensors, None

    def done(self, handle: Any) -> bool:
        return True

    def wait(self, handle: Any) -> None:
        pass


class PinnedAsyncCopy:
    """Accelerator tensors: non-blocking copies into pinned buffers, then an event."""

    def start(self, tensors: NamedTensors) -> tuple[NamedTensors, Any]:
        host: NamedTensors = []
        for name, t in tensors:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            buf.copy_(t, non_blocking=True)
            host.append((name, buf))
        event = torch.cuda.Event()
        event.record()  # on the current stream, after the copies
        return host, event

    def done(self, handle: Any) -> bool:
        return bool(handle.query())  # a status query, not a wait

    def wait(self, handle: Any) -> None:
        handle.synchronize()


def host_copy_for(device: torch.device) -> HostCopy:
    return ImmediateCopy() if device.type == "cpu" else PinnedAsyncCopy()


class LayerExport:
    """Callable as the model's ``on_layer(i)``; ``finish()`` once the forward pass is done."""

    def __init__(self, readers: list[tuple[Sink, LayerReader]], copy: HostCopy) -> None:
        self._readers = readers
        self._copy = copy
        # Started copies in layer order: (layer index, [(sink, host tensors)], handle).
        self._pending: deque[tuple[int, list[tuple[Sink, NamedTensors]], Any]] = deque()

    def __call__(self, layer_index: int) -> None:
        started = []
        handle = None
        for sink, read in self._readers:
            host, handle = self._copy.start(read(layer_index))
            started.append((sink, host))
        self._pending.append((layer_index, started, handle))
        self._deliver(self._copy.done)

    def finish(self) -> None:
        """Wait for the copies still in flight and hand over every layer not yet delivered."""
        self._deliver(self._waited)

    def _waited(self, handle: Any) -> bool:
        self._copy.wait(handle)
        return True

    def _deliver(self, ready: Callable[[Any], bool]) -> None:
        # The last handle of a layer covers all its copies (one stream, in order).
        while self._pending and ready(self._pending[0][2]):
            layer_index, started, _ = self._pending.popleft()
            for sink, host in started:
                sink.layer(layer_index, host)
