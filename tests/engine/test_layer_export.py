"""``LayerExport``'s hand-over rule, with a copy that completes late (as an accelerator's
non-blocking copy does): a sink gets each layer once, in order, only after its copy is done,
and all of them by ``finish``. The CUDA copy itself (pinned buffers, events) needs a GPU and
is not run here; the engine-level tests (``test_layer_hook.py``) run the CPU copy."""

from __future__ import annotations

from typing import Any

import torch

from prfaas.engine.layer_export import ImmediateCopy, LayerExport
from prfaas.engine.runner import NamedTensors


class LateCopy:
    """Copies complete only when ``complete`` is raised to their sequence number."""

    def __init__(self) -> None:
        self.started = 0
        self.completed = -1

    def start(self, tensors: NamedTensors) -> tuple[NamedTensors, Any]:
        self.started += 1
        return [(n, t.clone()) for n, t in tensors], self.started - 1

    def done(self, handle: Any) -> bool:
        return bool(handle <= self.completed)

    def wait(self, handle: Any) -> None:
        self.completed = max(self.completed, handle)


class Sink:
    def __init__(self) -> None:
        self.got: list[tuple[int, list[str]]] = []

    def layer(self, layer_index: int, tensors: NamedTensors) -> None:
        self.got.append((layer_index, [n for n, _ in tensors]))


def _reader(tag: str) -> Any:
    return lambda i: [(f"{tag}{i}.k", torch.full((2,), float(i)))]


def test_late_copies_are_handed_over_in_order_once_done() -> None:
    copy, a, b = LateCopy(), Sink(), Sink()
    export = LayerExport([(a, _reader("a")), (b, _reader("b"))], copy)
    export(0)
    export(1)
    assert a.got == [] and b.got == []  # nothing is handed over before its copy is done
    copy.completed = 1  # layer 0's two copies (handles 0, 1) are done, layer 1's are not
    export(2)
    assert a.got == [(0, ["a0.k"])] and b.got == [(0, ["b0.k"])]
    export.finish()
    assert [i for i, _ in a.got] == [0, 1, 2] and [i for i, _ in b.got] == [0, 1, 2]
    export.finish()  # nothing twice
    assert len(a.got) == 3


def test_cpu_copy_hands_each_layer_over_at_once() -> None:
    a = Sink()
    export = LayerExport([(a, _reader("a"))], ImmediateCopy())
    export(0)
    assert a.got == [(0, ["a0.k"])]
    export(1)
    export.finish()
    assert a.got == [(0, ["a0.k"]), (1, ["a1.k"])]
