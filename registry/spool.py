"""Content read during a crawl, held in memory up to a budget and in a temporary file past it.

A CI repository holds tens of thousands of images: holding every manifest and config of it
in memory until its write would make a sync's memory grow with the largest repository.
A `Spool` keeps only the raw bytes (a manifest's body, a config blob), decoding an entry
again when it is read; entries past the shared `Budget` go to an anonymous temporary file
that the operating system removes when the spool is closed or collected.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import IO

DEFAULT_MEMORY_BYTES = 8 * 1024 * 1024


class Budget:
    """Raw bytes the spools of one crawl may keep in memory, all together."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = DEFAULT_MEMORY_BYTES if limit is None else limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.used -= size


class Spool[Value](Mapping[str, Value]):
    """A read-only mapping from a key (a digest) to what `decode(key, meta, raw)` makes.

    `add` is thread-safe; reads happen once the crawl of its repository has ended."""

    def __init__(
        self, decode: Callable[[str, str, bytes], Value], budget: Budget | None = None
    ) -> None:
        self._decode = decode
        self._budget = budget or Budget()
        self._memory: dict[str, tuple[str, bytes]] = {}
        self._on_disk: dict[str, tuple[str, int, int]] = {}
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def add(self, key: str, meta: str, raw: bytes) -> None:
        """Keep `raw` under `key` (the first copy wins: a digest names one content)."""
        with self._lock:
            if key in self._memory or key in self._on_disk:
                return
            if self._budget.take(len(raw)):
                self._memory[key] = (meta, raw)
                return
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="hubimages-spool-")  # noqa: SIM115 (closed by close())
            offset = self._file.seek(0, 2)
            self._file.write(raw)
            self._on_disk[key] = (meta, offset, len(raw))

    def __getitem__(self, key: str) -> Value:
        return self._decode(key, *self._raw(key))

    def _raw(self, key: str) -> tuple[str, bytes]:
        if key in self._memory:
            return self._memory[key]
        meta, offset, length = self._on_disk[key]
        with self._lock:
            assert self._file is not None
            self._file.seek(offset)
            return meta, self._file.read(length)

    def __iter__(self) -> Iterator[str]:
        yield from list(self._memory)
        yield from list(self._on_disk)

    def __len__(self) -> int:
        return len(self._memory) + len(self._on_disk)

    def __contains__(self, key: object) -> bool:
        return key in self._memory or key in self._on_disk

    @property
    def spilled(self) -> int:
        """How many entries went to the temporary file."""
        return len(self._on_disk)

    def close(self) -> None:
        """Give the memory back to the budget and remove the file."""
        with self._lock:
            self._budget.give_back(sum(len(raw) for _, raw in self._memory.values()))
            self._memory.clear()
            self._on_disk.clear()
            if self._file is not None:
                self._file.close()
                self._file = None

    def __del__(self) -> None:
        if self._memory or self._file is not None:
            self.close()
