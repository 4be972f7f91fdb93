"""Repository globs (SPEC §8), shared by retention policies and team grants: `*` any
characters but `/`, `**` any characters, `?` one character but `/`, and a leading `!`
that excludes. A list of patterns covers a name when some pattern includes it and none
excludes it.

`covering` turns a list into one regular expression that Python and the databases read
alike (SQLite's REGEXP is Python's `re`; PostgreSQL's `~` reads the same anchors,
non-capturing groups and lookaheads), so a page can filter repositories in SQL with the
very rule a `covers` check applies to one name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Lowercase letters, digits, '.', '_', '-', '/', the wildcards, and a leading '!'.
PATTERN_RE = re.compile(r"^!?[a-z0-9._/*?-]+$")
NOTHING = r"(?!)"


def repository_glob(pattern: str) -> re.Pattern:
    """`*` any characters but `/`, `**` any characters, `?` one character but `/`."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = pattern[i]
        out.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
        i += 1
    return re.compile("".join(out))


def covering_body(patterns: Iterable[str]) -> str:
    """The unanchored expression for what `patterns` cover (only exclusions: nothing)."""
    patterns = list(patterns)
    including = [repository_glob(p).pattern for p in patterns if not p.startswith("!")]
    excluding = [repository_glob(p[1:]).pattern for p in patterns if p.startswith("!")]
    if not including:
        return NOTHING
    body = "|".join(f"(?:{p})" for p in including)
    if excluding:
        return "(?!(?:" + "|".join(f"(?:{p})" for p in excluding) + f")$)(?:{body})"
    return f"(?:{body})"


def anchored(bodies: Iterable[str]) -> str:
    """Any of several `covering_body` expressions, matching whole names."""
    bodies = [body for body in bodies if body != NOTHING]
    if not bodies:
        return f"^{NOTHING}$"
    return "^(?:" + "|".join(bodies) + ")$"


def covering(patterns: Iterable[str]) -> re.Pattern:
    return re.compile(anchored([covering_body(patterns)]))


def covers(patterns: Iterable[str], name: str) -> bool:
    return bool(covering(patterns).match(name))
