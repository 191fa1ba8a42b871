"""The parser of one file of the paper's released statistics archive, built for hostile input.

A file is opened without blocking and only if it is a regular file, read only up to a size cap
derived from the largest shape a real file can have (`max_file_bytes`), then parsed by a small
tokenizer of nested lists of numbers (`parse_stats_bytes`: memory proportional to the values,
no AST, no code ever executed) and validated (shape, finiteness, positivity, ordering).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np

from ._pythia_archs import PYTHIA_ARCHS

# Size caps, from the largest shape a real file has: 10 sequences x 4 x L values, L <= 36.
MAX_SEQUENCES = 32  # real files hold 10 probe sequences
_MAX_VALUE_BYTES = 64  # a printed float is <= 24 characters; room for separators and indents
_MAX_LAYERS = max(a.L for a in PYTHIA_ARCHS.values())


def max_file_bytes(n_layers: int = _MAX_LAYERS) -> int:
    """The largest archive file accepted for a model of `n_layers` layers, in bytes.

    MAX_SEQUENCES x 4 x n_layers values of at most 64 bytes each: 288 kB for 36 layers, 48 kB
    for 6 (real files: ~50 kB for 36 layers). A file is refused above this before it is parsed.
    """
    return MAX_SEQUENCES * 4 * int(n_layers) * _MAX_VALUE_BYTES


class MalformedFile(ValueError):
    """A statistics file that cannot be used; the message says why."""


class _NonNumeric(str):
    """A string, bool or None met where a number belongs (kept to name it in the message)."""


# One token of a nested list of numbers, after optional whitespace.
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<open>[\[(])
    | (?P<close>[\])])
    | (?P<comma>,)
    | (?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
    | (?P<str>'[^'\\\n]{0,64}'|"[^"\\\n]{0,64}")
    | (?P<name>[A-Za-z_]\w{0,63})(?!\w)
    )""",
    re.X,
)
_NAMES = ("True", "False", "None")
_NON_FINITE = {
    "inf": float("inf"),
    "nan": float("nan"),
    "Infinity": float("inf"),
    "NaN": float("nan"),
}


def _literal(text: str, max_values: int) -> list:
    """Nested lists (at most 3 deep) of floats parsed from a Python literal of numbers.

    A small tokenizer, no AST and no eval: memory grows with the values, not the text. Strings,
    True, False and None become _NonNumeric (reported by the shape checks); any other syntax
    raises MalformedFile('not a Python literal ...').
    """
    body = text.lstrip()
    if not body:
        raise MalformedFile("the file is empty")
    if not body.startswith(("[", "(")):
        if body[:1] in ("{", "'", '"') or body[:1].isdigit() or body.startswith(("-", ".")):
            raise MalformedFile("expected a non-empty list of sequences at the top level")
        raise MalformedFile(f"not a Python literal of nested lists (starts with {body[:20]!r})")
    stack: list[tuple[list, str]] = []  # open lists and their closing brackets
    top: list | None = None
    want_value = True  # after '[' or ',': a value or a closing bracket; else ',' or a closer
    pos, n_values = 0, 0

    def bad(what: str) -> MalformedFile:
        return MalformedFile(f"not a Python literal of nested lists of numbers ({what})")

    while True:
        m = _TOKEN.match(text, pos)
        if m is None:
            rest = text[pos:]
            if not rest.strip():
                break
            at = pos + len(rest) - len(rest.lstrip())
            raise bad(f"unexpected {text[at : at + 20]!r} at character {at}")
        pos, kind, token = m.end(), m.lastgroup, m.group(m.lastgroup or 0)
        if top is not None and not stack:
            raise bad(f"more text after the list, at character {m.start()}")
        if kind == "open":
            if not want_value:
                raise bad(f"missing ',' at character {m.start()}")
            if len(stack) == 3:
                raise MalformedFile("nested deeper than [sequences][4 rows][layers]")
            new: list = []
            if stack:
                stack[-1][0].append(new)
            else:
                top = new
            stack.append((new, "]" if token == "[" else ")"))
            want_value = True
        elif kind == "close":
            if not stack or token != stack[-1][1]:
                raise bad(f"unmatched {token!r} at character {m.start()}")
            stack.pop()
            want_value = False
        elif kind == "comma":
            if want_value:
                raise bad(f"unexpected ',' at character {m.start()}")
            want_value = True
        else:
            if not want_value:
                raise bad(f"missing ',' at character {m.start()}")
            if kind == "num":
                value: object = float(token)  # '1' + 400 zeros gives inf, never OverflowError
            elif kind == "str" or token in _NAMES:
                value = _NonNumeric(token)
            elif token in _NON_FINITE:
                value = _NON_FINITE[token]
            else:
                raise bad(f"name {token!r} at character {m.start()}")
            n_values += 1
            if n_values > max_values:
                raise MalformedFile(f"holds more than {max_values} values")
            stack[-1][0].append(value)
            want_value = False
    if stack or top is None:
        raise bad("the text ends before the list is closed")
    return top


def parse_stats_bytes(data: bytes, n_layers: int) -> np.ndarray:
    """Parse and validate the bytes of one archive file. Returns [sequences, 4, L] float64.

    Raises MalformedFile with the reason: too large, not a literal of nested lists of numbers,
    wrong shape, non-finite or non-positive values, or top1 >= top2 >= top3 >= median violated.
    """
    limit = max_file_bytes(n_layers)
    if len(data) > limit:
        raise MalformedFile(
            f"file is {len(data)} bytes, more than the {limit} a [<= {MAX_SEQUENCES}][4]"
            f"[{n_layers}] file of numbers can take"
        )
    text = data.decode("utf-8", errors="replace")
    value = _literal(text, MAX_SEQUENCES * 4 * n_layers)
    if len(value) == 0:
        raise MalformedFile("expected a non-empty list of sequences at the top level")
    for i, seq in enumerate(value):
        if not isinstance(seq, list) or len(seq) != 4:
            raise MalformedFile(f"sequence {i}: expected 4 rows (top1, top2, top3, median)")
        for j, row in enumerate(seq):
            if not isinstance(row, list) or len(row) != n_layers:
                got = len(row) if isinstance(row, list) else type(row).__name__
                raise MalformedFile(f"sequence {i} row {j}: expected {n_layers} layers, got {got}")
            for v in row:
                if not isinstance(v, float):
                    shown = str(v) if isinstance(v, _NonNumeric) else v
                    raise MalformedFile(f"sequence {i} row {j}: non-numeric value {shown}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise MalformedFile("contains non-finite values")
    if (arr <= 0).any():
        raise MalformedFile(f"contains {int((arr <= 0).sum())} non-positive values")
    # selection results: top1 >= top2 >= top3 >= median (tiny slack for printed rounding)
    if (np.diff(arr, axis=1) > 1e-6 * arr[:, :-1]).any():
        raise MalformedFile("values are not ordered top1 >= top2 >= top3 >= median")
    return arr


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; MalformedFile otherwise.

    Opened with O_NONBLOCK and checked with fstat before reading, so a FIFO or device is never
    read (and never hangs), and at most limit + 1 bytes are ever read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise MalformedFile(f"cannot be opened ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedFile("not a regular file; not read")
        if st.st_size > limit:
            raise MalformedFile(
                f"file is {st.st_size} bytes, more than the {limit} a [<= {MAX_SEQUENCES}][4]"
                "[layers] file of numbers can take; not read"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise MalformedFile(f"file grew past {limit} bytes while read; not read")
    return data


def parse_stats_file(path: str | os.PathLike, n_layers: int) -> np.ndarray:
    """Parse and validate one archive file. Returns [sequences, 4, L] float64.

    The file must be a regular file of at most max_file_bytes(n_layers) bytes (checked before
    reading); see parse_stats_bytes for the rest. Raises MalformedFile with the reason.
    """
    return parse_stats_bytes(read_capped(Path(path), max_file_bytes(n_layers)), n_layers)
