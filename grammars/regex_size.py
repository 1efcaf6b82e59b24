"""What building a Rust-syntax regex's token-level DFA costs, estimated from the pattern.

A token-level DFA (an outlines-core index) holds, per state, one transition for each token
that can continue there: its size grows with the character positions of the pattern (counted
repetitions unrolled) times how much of the vocabulary each position admits. Measured on a
128K-token vocabulary: `[1-5] - [A-Za-z ,.]{5,60}` (35 units) built in 1.3 s into 51 MiB,
`[^"]{0,100}` (100 units) in 10.6 s into 423 MiB.
"""

from __future__ import annotations

import functools

from corral.grammars.rust_regex import Parser, Ranges

_PRINTABLE_ASCII = 95  # U+0020..U+007E


@functools.lru_cache(maxsize=4096)  # asked again for each request of a repeated regex
def regex_cost(pattern: str) -> float:
    """Unrolled positions of `pattern`, each weighted by the share of printable ASCII its set
    takes (1 for a set with any non-ASCII character: most of a vocabulary can follow). An
    unbounded `x{m,}` counts as m copies (at least one). ValueError for a pattern
    `rust_regex` does not read."""
    return _cost(Parser(pattern).parse())


def _breadth(ranges: Ranges) -> float:
    if any(hi >= 0x80 for _, hi in ranges):
        return 1.0
    printable = sum(max(0, min(hi, 0x7E) - max(lo, 0x20) + 1) for lo, hi in ranges)
    return max(printable, 1) / _PRINTABLE_ASCII


def _cost(node: tuple) -> float:
    kind = node[0]
    if kind == "set":
        return _breadth(node[1])
    if kind in ("cat", "alt"):
        return sum(_cost(child) for child in node[1])
    child, lo, hi = node[1], node[2], node[3]  # "rep"
    copies = hi if hi is not None else max(lo, 1)
    return _cost(child) * copies
