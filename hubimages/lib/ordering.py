"""Putting items after the ones they depend on, otherwise keeping their order."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence


def dependencies_first[T, K: Hashable](
    items: Sequence[T], key: Callable[[T], K], after: Callable[[T], Iterable[K]]
) -> list[T]:
    """`items`, each after the items (by `key`) that `after(item)` names among them,
    otherwise in their given order (Kahn's algorithm, taking the earliest ready item each
    time). Anything caught in a cycle, which content addressing rules out, comes last in
    the given order."""
    position = {key(item): i for i, item in enumerate(items)}
    waiting: dict[K, int] = {}
    dependents: dict[K, list[K]] = defaultdict(list)
    for item in items:
        first = {k for k in after(item) if k in position}
        waiting[key(item)] = len(first)
        for k in first:
            dependents[k].append(key(item))
    ready = [position[k] for k, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[T] = []
    while ready:
        item = items[heapq.heappop(ready)]
        ordered.append(item)
        for k in dependents[key(item)]:
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, position[k])
    placed = {key(item) for item in ordered}
    return ordered + [item for item in items if key(item) not in placed]
