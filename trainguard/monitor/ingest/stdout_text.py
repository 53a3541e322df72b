"""Console text as trainers print it: terminal noise removed, printed Python dicts read safely.

Pure functions used by the stdout presets (see :mod:`trainguard.monitor.ingest.stdout`):

* :func:`segments` turns one physical line of console output into the pieces a person would see:
  ANSI escape sequences (colours, tqdm's cursor-up) removed, split on carriage returns (tqdm
  redraws its bar with ``\\r`` and ``tqdm.write`` clears it with ``\\r`` + spaces + ``\\r``
  before printing a log dict on the same physical line), blank pieces dropped.
* :func:`scan_log_dict` reads the ``{'key': value, ...}`` repr that the HF Trainer prints
  (``str(dict)``). It is a small dedicated scanner, never ``eval`` or ``ast.literal_eval``:
  linear in the line length, flat values only (a nested list or dict value is skipped over, not
  a metric). TRL 1.x prints floats as quoted strings with 4 significant digits (``'0.6931'``);
  older transformers print raw floats (``0.6931``, ``nan``, ``inf``): both read as numbers.
* :func:`trainer_bar` reads the HF Trainer's own step bar (its counter and total) from one
  piece of a line.
* :func:`decode_token` turns one printed value into a float, or ``None`` when it is not a
  number (``None``, ``True``, a placeholder string): the TRL callback drops those too.
"""

from __future__ import annotations

import re
from typing import Final

from trainguard.events import decode_value

__all__ = ["decode_token", "scan_log_dict", "segments", "trainer_bar"]

#: CSI sequences (colours, cursor moves), OSC sequences (titles, links) and two-byte escapes.
_ANSI: Final = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")

#: A quoted string of a repr, backslash escapes allowed (kept as printed).
_Q1: Final = r"'((?:[^'\\]|\\.)*)'"
_Q2: Final = r'"((?:[^"\\]|\\.)*)"'
#: One ``key: value`` item of a printed dict followed by ``,`` or the closing ``}``. Keys are
#: quoted (Python uses double quotes for a key holding a single quote); a value is a quoted
#: string or a bare token, possibly a call such as ``np.float64(0.5)`` or ``tensor(0.5)``.
_ITEM: Final = re.compile(
    rf"""\s*(?:{_Q1}|{_Q2})\s*:\s*"""
    rf"""(?:{_Q1}|{_Q2}|([^\s,'"()\[\]{{}}]+(?:\([^()]*\))?))"""
    r"""\s*([,}])""")
_KEY: Final = re.compile(rf"""\s*(?:{_Q1}|{_Q2})\s*:\s*""")
_END: Final = re.compile(r"\s*([,}])")
_EMPTY: Final = re.compile(r"\s*\}")
_OPEN: Final = {"[": "]", "{": "}", "(": ")"}
_NOT_METRICS: Final = frozenset({"None", "True", "False"})


def segments(text: str) -> list[str]:
    """The visible pieces of one physical console line: ANSI removed, split on ``\\r``."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "\r" not in text:
        return [text] if text.strip() else []
    return [piece for piece in text.split("\r") if piece.strip()]


#: The HF Trainer's step bar (``ProgressCallback``: ``tqdm(total=max_steps)``, no description,
#: so datasets' "Map: ..." bars do not match): ``  5%|▌    | 1/20 [00:00<00:05,  3.41it/s]``.
_TRAINER_BAR: Final = re.compile(r"\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[")


def trainer_bar(text: str) -> tuple[int, int] | None:
    """(counter, total) of a tqdm bar drawn with no description (the HF Trainer's), or None.
    A bar whose counter is past its total is not a bar."""
    m = _TRAINER_BAR.match(text)
    if m is None:
        return None
    counter, total = int(m.group(1)), int(m.group(2))
    return (counter, total) if total > 0 and counter <= total else None


def decode_token(token: str, quoted: bool = False) -> float | None:
    """A printed value as a float, or ``None`` when it is not a number.

    ``'0.6931'``, ``0.6931``, ``nan``, ``-inf``, ``1e-05`` and wrappers such as
    ``np.float64(0.5)`` or ``tensor(0.5, device='cuda:0')`` are numbers; ``None``, booleans and
    other strings are not.
    """
    try:
        return float(token)  # the common case: '0.6931', 1e-05, nan, inf
    except ValueError:
        pass
    if quoted:
        return decode_value(token)
    if token in _NOT_METRICS:
        return None
    if token.endswith(")"):
        inner = token[token.find("(") + 1:-1]
        token = inner.split(",", 1)[0].strip()
    return decode_value(token)


def _skip_nested(text: str, pos: int) -> int:
    """End of the bracketed value starting at ``pos`` (quotes respected), or -1 if unclosed."""
    stack = [_OPEN[text[pos]]]
    i, n = pos + 1, len(text)
    while i < n:
        c = text[i]
        if c == "'" or c == '"':
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                return -1
        elif c in _OPEN:
            stack.append(_OPEN[c])
        elif c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return -1


def scan_log_dict(text: str, start: int) -> tuple[dict[str, float], set[str]] | None:
    """Read the printed dict whose ``{`` is at ``text[start]``.

    Returns ``(metrics, keys)``: the numeric values, and every key seen (numbers or not), or
    ``None`` when the text is not a well-formed flat dict repr.
    """
    flat = _split_flat(text, start)
    if flat is not None:
        return flat
    return _scan_items(text, start)


def _split_flat(text: str, start: int) -> tuple[dict[str, float], set[str]] | None:
    """The fast path for what Trainers print: a flat repr, items joined by ``', '`` and
    ``': '``. Every piece is checked (a quoted key, a quoted value or a bare token without
    quotes or spaces); any doubt (a nested value, a quote or separator inside a string) gives
    ``None`` and the item scanner decides. About 4x faster than a regex per item."""
    end = text.find("}", start)
    if end < 0:
        return None
    inner = text[start + 1:end]
    metrics: dict[str, float] = {}
    keys: set[str] = set()
    if not inner.strip():
        return metrics, keys
    if "{" in inner or "[" in inner or "\\" in inner:
        return None
    for part in inner.split(", "):
        key, sep, raw = part.partition(": ")
        q = key[:1]
        if not sep or (q != "'" and q != '"') or len(key) < 2 or key[-1] != q or q in key[1:-1]:
            return None
        key = key[1:-1]
        keys.add(key)
        q = raw[:1]
        if q == "'" or q == '"':
            if len(raw) < 2 or raw[-1] != q or q in raw[1:-1]:
                return None
            raw, quoted = raw[1:-1], True
        elif not raw or "'" in raw or '"' in raw or " " in raw:
            return None
        else:
            quoted = False
        try:
            metrics[key] = float(raw)  # the common case, a number
        except ValueError:
            value = decode_token(raw, quoted)
            if value is not None:
                metrics[key] = value
    return metrics, keys


def _scan_items(text: str, start: int) -> tuple[dict[str, float], set[str]] | None:
    """Item by item, skipping nested values; ``None`` when the text is not a dict repr."""
    pos = start + 1
    metrics: dict[str, float] = {}
    keys: set[str] = set()
    if _EMPTY.match(text, pos):
        return metrics, keys
    match = _ITEM.match
    while True:
        m = match(text, pos)
        if m is not None:
            key, sq, dq, bare, end = m.group(1, 3, 4, 5, 6)
            if key is None:
                key = m.group(2)
            keys.add(key)
            if bare is not None:
                value = decode_token(bare)
            else:
                value = decode_token(sq if sq is not None else dq, quoted=True)
            if value is not None:
                metrics[key] = value
            pos = m.end()
        else:  # a nested value (a list, a dict), or not a dict at all
            k = _KEY.match(text, pos)
            if k is None or k.end() >= len(text) or text[k.end()] not in _OPEN:
                return None
            keys.add(k.group(1) if k.group(1) is not None else k.group(2))
            after = _skip_nested(text, k.end())
            if after < 0:
                return None
            e = _END.match(text, after)
            if e is None:
                return None
            end, pos = e.group(1), e.end()
        if end == "}":
            return metrics, keys
