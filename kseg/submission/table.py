"""A submission file's cells, read once: a fast path for the plain files kseg and most notebooks write,
and pandas for everything else (quotes, carriage returns, blank lines, other encodings).

The runs column stays bytes (it goes straight to the tokeniser, ``kseg.rle.parse_rows``), so a 41 MB
file is never turned into millions of Python characters and back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass


class NotCSV(ValueError):
    """The bytes are not a CSV table; the message says why (pandas' reason)."""


@dataclass
class SubmissionTable:
    """The cells of a submission: its header, the first column (ids or images) and the second (runs, as
    bytes), and the third when there is one (the class cell of the long layout)."""

    header: list[str]
    first: list[str]
    runs: list[bytes]
    third: list[str] | None


def _plain(data: bytes) -> SubmissionTable | None:
    """The table when the file is plain ASCII with ``\\n`` line ends, no quotes, no blank lines and the
    header's number of cells on every line (what pandas reads the same way); ``None`` otherwise."""
    if b'"' in data or b"\r" in data or not data.isascii():
        return None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines or b"" in lines:
        return None
    header = lines[0].decode("ascii").split(",")
    n = len(header)
    if len(set(header)) != n or n < 2 or any(not cell for cell in header):
        return None
    rows = [line.split(b",", n - 1) for line in lines[1:]]  # a comma in the last cell: a row too long
    if any(len(row) != n for row in rows) or any(b"," in row[-1] for row in rows):
        return None
    columns = list(zip(*rows, strict=True)) if rows else [()] * n
    first = [cell.decode("ascii") for cell in columns[0]]
    third = [cell.decode("ascii") for cell in columns[2]] if n > 2 else None
    return SubmissionTable(header, first, list(columns[1]), third)


def _with_pandas(data: bytes) -> SubmissionTable:
    import pandas as pd

    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise NotCSV(reason) from None
    header = [str(c) for c in table.columns]
    if len(header) < 2:
        return SubmissionTable(header, table[header[0]].tolist() if header else [], [], None)
    # a line break inside a quoted cell would split a row in the tokeniser: make it a bad character
    runs = [str(text).replace("\n", "\x00").encode("utf-8", "surrogatepass") for text in table[header[1]]]
    third = table[header[2]].tolist() if len(header) > 2 else None
    return SubmissionTable(header, table[header[0]].tolist(), runs, third)


def read_table(data: bytes) -> SubmissionTable:
    """A submission's cells (see the module's note on the two paths).

    Raises:
        NotCSV: pandas cannot read the bytes as a CSV table.
    """
    if not data.strip():
        raise NotCSV("the file is empty: not even a header line")
    return _plain(data) or _with_pandas(data)
