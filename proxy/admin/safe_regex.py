"""Linear-time regex `search` with RE2 semantics, for untrusted patterns (`/stats?filter=`).

Job: Envoy evaluates the admin stats filter with RE2, whose run time is linear in the text.
Python's `re` backtracks: `(.|.)*!` or `(a*)*b` against a long stat name takes exponential
time and would pin an admin thread. `SafeRegex.compile()` parses the pattern with the
stdlib's own parser (so syntax errors read like `re`'s), refuses what RE2 refuses, and
compiles the rest into a Thompson NFA; `search()` simulates it with a state set (a Pike VM
without captures: only a boolean is needed). Work is at most `program_size` state visits per
text position, i.e. O(len(text) x program size), and never backtracks.

Accepted (the RE2 subset): literals, `.`, classes `[...]` with ranges and negation, `\\d \\w
\\s` and their negations (ASCII, as in RE2), `|`, groups (capturing, named, non-capturing),
`* + ? {m} {m,} {m,n}` greedy or lazy (counts up to 1000, as RE2), anchors `^ $ \\A \\Z`,
`\\b \\B`, flags `i m s` (global or scoped). `$` without `m` matches only at the end of the
text, as in RE2 (Python's `$` also matches before a final newline).
`budgeted()` adds a total work cap for one caller searching many texts.
Refused with `SafeRegexError` naming the construct: backreferences, lookahead/lookbehind,
possessive repeats, atomic groups, conditional groups, flags `x a L`, patterns longer than
MAX_PATTERN_LEN and programs larger than MAX_PROGRAM_SIZE (RE2's max_program_size idea).

Must not: do I/O, use threads or clocks, keep module-level mutable state.
Thread affinity: none. A compiled `SafeRegex` is immutable and safe to share across threads;
`search()` allocates its state per call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

try:  # Python 3.11+ names it re._parser; older versions sre_parse.
    from re import _constants as _c, _parser as _sre_parse
except ImportError:  # pragma: no cover - pre-3.11
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["SafeRegex", "SafeRegexError", "BudgetedSearch", "MAX_PROGRAM_SIZE", "MAX_PATTERN_LEN",
           "MAX_REPEAT_COUNT"]

# Threat: a small pattern that expands into a huge program (`(a{1000}){1000}`); work per
# text character is up to the program size (~0.4 us per state visit here, so ~25 ms for a
# 60-char name in the worst case; callers over many names also cap total work: budgeted()).
MAX_PROGRAM_SIZE = 1000
# Threat: parse time and recursion depth on a pattern from a URL query string.
MAX_PATTERN_LEN = 4096
# RE2 refuses repeat counts above 1000 ("bad repetition operator").
MAX_REPEAT_COUNT = 1000
# Threat: empty sub-patterns repeated in nests (`((){1000}){1000}`) emit no instructions
# but still cost compile work; bound the tree walk too.
_MAX_COMPILE_WORK = 20 * MAX_PROGRAM_SIZE

# Plain ints: RegexFlag enum arithmetic is slow.
_I, _M, _S = int(re.IGNORECASE), int(re.MULTILINE), int(re.DOTALL)
_ALLOWED_FLAGS = _I | _M | _S | int(re.UNICODE)
_FLAG_NAMES = ((int(re.VERBOSE), "x (verbose)"), (int(re.ASCII), "a (ascii)"),
               (int(re.LOCALE), "L (locale)"), (int(re.DEBUG), "debug"))

# Instruction kinds. An instruction is a tuple: (CHAR, test) / (ASSERT, test) continue at
# pc + 1; (SPLIT, x, y); (JMP, x); (MATCH,).
CHAR, ASSERT, SPLIT, JMP, MATCH = range(5)

_DIGIT = frozenset("0123456789")
_WORD = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_SPACE = frozenset("\t\n\f\r ")  # RE2's \s
_CATEGORIES: dict[object, tuple[frozenset[str], bool]] = {
    _c.CATEGORY_DIGIT: (_DIGIT, False), _c.CATEGORY_NOT_DIGIT: (_DIGIT, True),
    _c.CATEGORY_WORD: (_WORD, False), _c.CATEGORY_NOT_WORD: (_WORD, True),
    _c.CATEGORY_SPACE: (_SPACE, False), _c.CATEGORY_NOT_SPACE: (_SPACE, True),
}
_REFUSED = {
    _c.GROUPREF: "backreference", _c.GROUPREF_EXISTS: "conditional group (?(id)yes|no)",
    _c.ASSERT: "lookahead/lookbehind assertion", _c.ASSERT_NOT: "negative lookahead/lookbehind",
    _c.POSSESSIVE_REPEAT: "possessive repeat", _c.ATOMIC_GROUP: "atomic group (?>...)",
}

CharTest = Callable[[str], bool]
PosTest = Callable[[str, int], bool]


class SafeRegexError(ValueError):
    """The pattern is invalid, or valid Python but outside the RE2 subset we accept."""


def _is_word(text: str, pos: int) -> bool:
    return 0 <= pos < len(text) and text[pos] in _WORD


def _at_test(code: object, flags: int) -> PosTest:
    multiline = bool(flags & _M)
    if code is _c.AT_BEGINNING_STRING or (code is _c.AT_BEGINNING and not multiline):
        return lambda text, pos: pos == 0
    if code is _c.AT_END_STRING or (code is _c.AT_END and not multiline):
        return lambda text, pos: pos == len(text)
    if code is _c.AT_BEGINNING:
        return lambda text, pos: pos == 0 or text[pos - 1] == "\n"
    if code is _c.AT_END:
        return lambda text, pos: pos == len(text) or text[pos] == "\n"
    if code is _c.AT_BOUNDARY:
        return lambda text, pos: _is_word(text, pos - 1) != _is_word(text, pos)
    if code is _c.AT_NON_BOUNDARY:
        return lambda text, pos: _is_word(text, pos - 1) == _is_word(text, pos)
    raise SafeRegexError(f"unsupported by RE2: anchor {code}")


def _literal_test(cp: int, negate: bool, flags: int) -> CharTest:
    c = chr(cp)
    if flags & _I:
        lo, up = c.lower(), c.upper()
        return lambda ch: (ch.lower() == lo or ch.upper() == up) != negate
    return (lambda ch: ch != c) if negate else (lambda ch: ch == c)


def _set_test(items: list[tuple[object, object]], flags: int) -> CharTest:
    negate = False
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    cats: list[tuple[frozenset[str], bool]] = []
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            chars.add(chr(av))  # type: ignore[arg-type]
        elif op is _c.RANGE:
            lo, hi = av  # type: ignore[misc]
            ranges.append((chr(lo), chr(hi)))
        elif op is _c.CATEGORY:
            if av not in _CATEGORIES:
                raise SafeRegexError(f"unsupported by RE2: character class {av}")
            cats.append(_CATEGORIES[av])
        else:
            raise SafeRegexError(f"unsupported by RE2: {op} in character class")
    fchars, franges, fcats = frozenset(chars), tuple(ranges), tuple(cats)

    def one(ch: str) -> bool:
        return (ch in fchars or any(lo <= ch <= hi for lo, hi in franges)
                or any((ch in s) != neg for s, neg in fcats))

    if flags & _I:
        return lambda ch: (one(ch) or one(ch.lower()) or one(ch.upper())) != negate
    return lambda ch: one(ch) != negate


class _Compiler:
    """Emits instructions for a parsed pattern into `prog`; falls through to len(prog)."""

    def __init__(self) -> None:
        self.prog: list[list[object]] = []
        self.work = 0

    def emit(self, *ins: object) -> int:
        if len(self.prog) >= MAX_PROGRAM_SIZE:
            raise SafeRegexError(f"pattern too large: compiled program exceeds {MAX_PROGRAM_SIZE} instructions")
        self.prog.append(list(ins))
        return len(self.prog) - 1

    def seq(self, items: object, flags: int) -> None:
        self.work += 1 + len(items)  # type: ignore[arg-type]  # charged even when items is empty
        if self.work > _MAX_COMPILE_WORK:
            raise SafeRegexError("pattern too large: too much repetition of empty sub-patterns")
        for op, av in items:  # type: ignore[attr-defined]
            self.node(op, av, flags)

    def node(self, op: object, av: object, flags: int) -> None:
        if op in _REFUSED:
            raise SafeRegexError(f"unsupported by RE2: {_REFUSED[op]}")
        if op is _c.LITERAL or op is _c.NOT_LITERAL:
            self.emit(CHAR, _literal_test(av, op is _c.NOT_LITERAL, flags))  # type: ignore[arg-type]
        elif op is _c.ANY:
            self.emit(CHAR, (lambda ch: True) if flags & _S else (lambda ch: ch != "\n"))
        elif op is _c.IN:
            self.emit(CHAR, _set_test(av, flags))  # type: ignore[arg-type]
        elif op is _c.AT:
            self.emit(ASSERT, _at_test(av, flags))
        elif op is _c.SUBPATTERN:
            _group, add, remove, sub = av  # type: ignore[misc]
            self.seq(sub, (_check_flags(flags | add) & ~remove))
        elif op is _c.BRANCH:
            self.branch(av[1], flags)  # type: ignore[index]
        elif op is _c.MAX_REPEAT or op is _c.MIN_REPEAT:
            self.repeat(*av, flags)  # type: ignore[misc]
        else:
            raise SafeRegexError(f"unsupported by RE2: {op}")

    def branch(self, alts: list[object], flags: int) -> None:
        jumps: list[int] = []
        for alt in alts[:-1]:
            split = self.emit(SPLIT, len(self.prog) + 1, 0)
            self.seq(alt, flags)
            jumps.append(self.emit(JMP, 0))
            self.prog[split][2] = len(self.prog)
        self.seq(alts[-1], flags)
        for j in jumps:
            self.prog[j][1] = len(self.prog)

    def repeat(self, lo: int, hi: int, item: object, flags: int) -> None:
        unbounded = hi is _c.MAXREPEAT
        if lo > MAX_REPEAT_COUNT or (not unbounded and hi > MAX_REPEAT_COUNT):
            raise SafeRegexError(f"bad repetition operator: counts above {MAX_REPEAT_COUNT} are refused (RE2)")
        for _ in range(lo):
            self.seq(item, flags)
        if unbounded:  # L: split body, end; body; jmp L; end:
            loop = self.emit(SPLIT, len(self.prog) + 1, 0)
            self.seq(item, flags)
            self.emit(JMP, loop)
            self.prog[loop][2] = len(self.prog)
            return
        splits = []  # (hi - lo) nested optionals, each skipping to the common end
        for _ in range(hi - lo):
            splits.append(self.emit(SPLIT, len(self.prog) + 1, 0))
            self.seq(item, flags)
        for s in splits:
            self.prog[s][2] = len(self.prog)


def _check_flags(flags: int) -> int:
    for bit, name in _FLAG_NAMES:
        if flags & bit:
            raise SafeRegexError(f"unsupported by RE2: flag {name}")
    if flags & ~_ALLOWED_FLAGS:
        raise SafeRegexError(f"unsupported by RE2: flags {flags & ~_ALLOWED_FLAGS:#x}")
    return flags


@dataclass(frozen=True, slots=True)
class SafeRegex:
    """A compiled pattern. Build with `SafeRegex.compile(pattern)`."""

    pattern: str
    program: tuple[tuple[object, ...], ...]
    anchored: bool  # starts with \\A (or ^ without m): try the start state at position 0 only
    literal: str | None  # fast path: the pattern is a plain substring

    @classmethod
    def compile(cls, pattern: str) -> SafeRegex:
        if not isinstance(pattern, str):
            raise SafeRegexError("pattern must be str")
        if len(pattern) > MAX_PATTERN_LEN:
            raise SafeRegexError(f"pattern too long: {len(pattern)} > {MAX_PATTERN_LEN} characters")
        comp = _Compiler()
        try:
            parsed = _sre_parse.parse(pattern, 0)
            flags = _check_flags(parsed.state.flags)
            comp.seq(parsed, flags)
        except re.error as e:
            raise SafeRegexError(str(e)) from None
        except RecursionError:
            raise SafeRegexError("pattern too deeply nested") from None
        comp.emit(MATCH)
        first = parsed[0] if len(parsed) else None
        anchored = first is not None and first[0] is _c.AT and (
            first[1] is _c.AT_BEGINNING_STRING or (first[1] is _c.AT_BEGINNING and not flags & _M))
        plain = not flags & _I and all(op is _c.LITERAL for op, _ in parsed)
        literal = "".join(chr(av) for _, av in parsed) if plain else None
        return cls(pattern, tuple(tuple(i) for i in comp.prog), anchored, literal)

    def budgeted(self, max_steps: int) -> BudgetedSearch:
        """A per-request searcher that raises `SafeRegexError` once its searches together
        have made more than `max_steps` state visits (bounds a filter over many names)."""
        return BudgetedSearch(self, max_steps)

    def search(self, text: str) -> bool:
        """True if the pattern matches anywhere in `text` (like `re.search(...) is not None`)."""
        return self.search_steps(text)[0]

    def search_steps(self, text: str) -> tuple[bool, int]:
        """`search()` plus the number of NFA state visits it made (for tests and diagnostics).
        Invariant: steps <= len(program) * (len(text) + 1)."""
        if self.literal is not None:
            return self.literal in text, 0
        prog = self.program
        marks = [-1] * len(prog)  # marks[pc] == pos: pc already in the list for position pos
        steps = 0

        def add(lst: list[int], pc: int, pos: int) -> bool:
            """Add pc's epsilon-closure at pos to lst; True when MATCH is reached."""
            nonlocal steps
            stack = [pc]
            found = False
            while stack:
                pc = stack.pop()
                if marks[pc] == pos:
                    continue
                marks[pc] = pos
                steps += 1
                ins = prog[pc]
                kind = ins[0]
                if kind == SPLIT:
                    stack.append(ins[2])
                    stack.append(ins[1])
                elif kind == JMP:
                    stack.append(ins[1])
                elif kind == ASSERT:
                    if ins[1](text, pos):
                        stack.append(pc + 1)
                elif kind == MATCH:
                    found = True
                else:
                    lst.append(pc)
            return found

        clist: list[int] = []
        if add(clist, 0, 0):
            return True, steps
        for pos, ch in enumerate(text):
            nlist: list[int] = []
            for pc in clist:
                if prog[pc][1](ch) and add(nlist, pc + 1, pos + 1):
                    return True, steps
            if not self.anchored and add(nlist, 0, pos + 1):
                return True, steps
            if not nlist and self.anchored:
                break
            clist = nlist
        return False, steps


class BudgetedSearch:
    """`search()` with a total work budget. Mutable: create one per request, use on one thread."""

    __slots__ = ("regex", "left")

    def __init__(self, regex: SafeRegex, max_steps: int) -> None:
        self.regex, self.left = regex, max_steps

    def search(self, text: str) -> bool:
        found, steps = self.regex.search_steps(text)
        self.left -= steps
        if self.left < 0:
            raise SafeRegexError("filter too expensive: work budget exhausted")
        return found
