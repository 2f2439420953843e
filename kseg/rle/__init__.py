"""Run-length encoding in Kaggle's submission format, vectorised.

Pixel numbering (the Kaggle default, ``order="column"``): pixels are numbered from **1**, **top to
bottom, then left to right**, i.e. down the first column, then down the second. The pixel at row ``y``,
column ``x`` of an ``H x W`` mask has number ``x * H + y + 1``. A mask is written as ``start length``
pairs separated by single spaces, starts ascending; an empty mask is the empty token (``""`` by default;
some competitions want ``"-1"``). ``order="row"`` numbers pixels left to right, then top to bottom
(``y * W + x + 1``), as some competitions do.

Runs may continue from the bottom of one column into the top of the next: numbering is continuous.

Everything is vectorised: runs are found with one comparison pass over each label map for all classes
together, grouped with a radix sort, and turned into text with a two-digit lookup table; no Python loop
runs over pixels, runs or digits. ``encode_batch`` is the fast path used to write whole submissions and
spreads its work over threads (NumPy releases the GIL in these kernels).
"""

from kseg.rle.decoding import decode, decode_batch, decode_labels, parse_rows
from kseg.rle.encoding import encode, encode_batch, encode_labels, runs, runs_to_text
from kseg.rle.pixels import Order

__all__ = [
    "Order",
    "decode",
    "decode_batch",
    "decode_labels",
    "encode",
    "encode_batch",
    "encode_labels",
    "parse_rows",
    "runs",
    "runs_to_text",
]
