"""Work spread over threads with its results in order: for steps that let other threads run
while they work (ONNX Runtime's networks, OpenCV, reading files), so that a single process
detects faces on every core. `predict` and `evaluate --scenes` use it."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_order(function: Callable[[Item], Result], items: Iterable[Item], threads: int = 0) -> Iterator[Result]:
    """`function` of each item, in the items' order, `threads` at a time (0: one per CPU core).
    The items are drawn in this thread, one at a time, at most two per thread ahead of the result
    being used: memory stays bounded, and items made with a random generator are made in order."""
    threads = threads or os.cpu_count() or 1
    ahead: deque[Future] = deque()
    with ThreadPoolExecutor(threads) as pool:
        for item in items:
            ahead.append(pool.submit(function, item))
            if len(ahead) > 2 * threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
