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


# -- does one list of patterns reach beyond others? ------------------------------------------

REPOSITORY_NAMES = "repository"
REGISTRY_NAMES = "registry"
# Explored states at most: real patterns need a few hundred; past this, "beyond" (refuse).
MAX_STATES = 50_000
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_SEPARATORS = "-._"


def example_beyond(
    patterns: Iterable[str], within: Iterable[Iterable[str]], *, names: str = REPOSITORY_NAMES
) -> str | None:
    """A name that `patterns` cover and none of the `within` lists does, or None when
    there is none: whatever the names that exist today, so a name pushed tomorrow is
    decided the same way. "" when the patterns are too intricate to decide: read it as
    "beyond"."""
    return example([patterns], within, names=names)


def example(
    all_of: Iterable[Iterable[str]],
    none_of: Iterable[Iterable[str]] = (),
    *,
    names: str = REPOSITORY_NAMES,
) -> str | None:
    """The shortest name that every list of `all_of` covers and no list of `none_of` does,
    or None when no name is such. `names` says which names count: repository names
    (`team/api`: lowercase letters and digits, separated by `.`, `_` or `-`, components by
    `/`) or registry names (`prod-eu`). "" when the patterns are too intricate to decide
    (past MAX_STATES).

    Each glob is a small automaton (its positions in the pattern); the search walks all of
    them at once over the characters the patterns name (and one letter and one separator
    they do not: any other behaves as those), shortest names first."""
    required = [_Cover(each) for each in all_of]
    refused = [_Cover(each) for each in none_of]
    covers = required + refused
    globs = [glob for cover in covers for glob in cover.globs]
    offsets, offset = [], 0
    for cover in covers:
        offsets.append(offset)
        offset += len(cover.globs)
    alphabet = _alphabet(globs)
    valid = _valid_repository_step if names == REPOSITORY_NAMES else _valid_registry_step
    start = (0, tuple(glob.start for glob in globs))
    seen = {start}
    frontier = [(start, "")]
    while frontier:
        following = []
        for (name_state, states), name in frontier:
            if name_state == _NAME_ENDS and all(
                cover.covers(states, at) == (i < len(required))
                for i, (cover, at) in enumerate(zip(covers, offsets, strict=True))
            ):
                return name
            for char in alphabet:
                next_name = valid(name_state, char)
                if next_name is None:
                    continue
                step = (
                    next_name,
                    tuple(g.step(s, char) for g, s in zip(globs, states, strict=True)),
                )
                if step not in seen:
                    if len(seen) >= MAX_STATES:
                        return ""
                    seen.add(step)
                    following.append((step, name + char))
        frontier = following
    return None


class _Glob:
    """One pattern as an automaton: a state is the set of positions reached in it."""

    def __init__(self, pattern: str) -> None:
        self.tokens: list[str] = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                self.tokens.append("**")
                i += 2
            else:
                self.tokens.append(pattern[i])
                i += 1
        self.start = self._closure({0})

    def _closure(self, positions: set[int]) -> frozenset[int]:
        """A `*` or `**` may match nothing: reaching it reaches what follows it too."""
        todo, done = list(positions), set(positions)
        while todo:
            i = todo.pop()
            if i < len(self.tokens) and self.tokens[i] in ("*", "**") and i + 1 not in done:
                done.add(i + 1)
                todo.append(i + 1)
        return frozenset(done)

    def step(self, positions: frozenset[int], char: str) -> frozenset[int]:
        reached = set()
        for i in positions:
            if i == len(self.tokens):
                continue
            token = self.tokens[i]
            if token == "**" or (token == "*" and char != "/"):
                reached.add(i)
            elif token == char or (token == "?" and char != "/"):
                reached.add(i + 1)
        return self._closure(reached)

    def accepts(self, positions: frozenset[int]) -> bool:
        return len(self.tokens) in positions


class _Cover:
    """A list of patterns: some pattern includes the name and no `!` pattern excludes it."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.including = [_Glob(p) for p in patterns if not p.startswith("!")]
        self.excluding = [_Glob(p[1:]) for p in patterns if p.startswith("!")]
        self.globs = [*self.including, *self.excluding]

    def covers(self, states: tuple[frozenset[int], ...], offset: int) -> bool:
        """Whether the name read so far is covered; `states[offset:]` are this list's."""
        mine = states[offset : offset + len(self.globs)]
        reached = [glob.accepts(state) for glob, state in zip(self.globs, mine, strict=True)]
        split = len(self.including)
        return any(reached[:split]) and not any(reached[split:])


def _alphabet(globs: list[_Glob]) -> list[str]:
    """The characters the patterns name, `/`, and one letter and one separator they do
    not name (any other would behave as those)."""
    named = {t for glob in globs for t in glob.tokens if len(t) == 1 and t not in "*?"}
    chars = set(named) | {"/"}
    chars.update(c for c in (_first_not_in(_ALNUM, named), _first_not_in(_SEPARATORS, named)) if c)
    return sorted(chars, key=lambda c: (c not in _ALNUM, c == "/", c))


def _first_not_in(candidates: str, named: set[str]) -> str:
    return next((c for c in candidates if c not in named), "")


# Name automata: 0 start of a component, 1 in letters/digits (where a name may end), 2
# after a separator.
_NAME_ENDS = 1


def _valid_repository_step(state: int, char: str) -> int | None:
    if char in _ALNUM:
        return 1
    if char in _SEPARATORS and state in (1, 2):
        return 2
    if char == "/" and state == 1:
        return 0
    return None


def _valid_registry_step(state: int, char: str) -> int | None:
    if char in _ALNUM:
        return 1
    if char == "-" and state == 1:
        return 1
    return None
