"""Run-length encoding in Kaggle's submission format, vectorised.

Pixel numbering (the Kaggle default, ``order="column"``): pixels are numbered from **1**, **top to
bottom, then left to right**, i.e. down the first column, then down the second. The pixel at row ``y``,
column ``x`` of an ``H x W`` mask has number ``x * H + y + 1``. A mask is written as ``start length``
pairs separated by single spaces, starts ascending; an empty mask is the empty token (``""`` by default;
some competitions want ``"-1"``). ``order="row"`` numbers pixels left to right, then top to bottom
(``y * W + x + 1``), as some competitions do.

Runs may continue from the bottom of one column into the top of the next: numbering is continuous.

Everything is vectorised and no Python loop runs over pixels, runs or digits. Encoding: column order
first transposes each map (OpenCV's blocked transpose), run starts of all classes come from one
comparison pass and a word-at-a-time search, a radix sort groups them by (image, class), and numbers
become text through digit lookup tables, each written at its offset as one overlapping 8-byte store.
Decoding: eight digits are parsed at a time (SWAR); a whole label map's runs are sorted as uint32 keys
(SIMD), checked to tile the image, and painted with one ``np.repeat``. ``encode_batch`` and
``decode_batch`` are the fast paths used for whole submissions and spread their work over threads (NumPy
releases the GIL in these kernels).
"""

from kseg.rle.decoding import decode, decode_batch, decode_labels, parse_rows, tokenise_rows
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
    "tokenise_rows",
]
