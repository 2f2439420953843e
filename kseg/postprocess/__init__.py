"""Post-processing tuned on out-of-fold (OOF) predictions: per-class probability thresholds and
minimum areas (``params``: the parameters and applying them; ``oof``: the OOF statistics; ``search``:
the search; ``instances``: the search under ``instance_fbeta``).

With one submission row per image and class, and Dice = 1 for an empty row only when the prediction is
empty too, a few stray pixels of an absent class cost a whole row. For each class ``k`` two parameters
are searched:

- ``threshold``: a pixel keeps class ``k`` only if ``k`` is its argmax **and** ``p_k >= threshold``
  (0 = plain argmax); with ``data.multilabel`` (one sigmoid per class) a pixel holds class ``k`` when
  ``p_k >= threshold``, whatever the other classes (0.5 untuned, searched from 0.05 to 0.95);
- ``min_area``: if fewer than this share of the image's pixels keep class ``k``, the row is emptied.

Pixels removed this way belong to no class (label 255; multilabel: the class's bit is cleared), so the
other rows are untouched: classes are
tuned independently and the score the tuner reports is the score the submission gets. The search is
exhaustive over a grid and includes the identity (0, 0), so the in-sample OOF score can only rise.

It is fast because each OOF image is read once: for the pixels of each predicted class, a histogram of
that class's probability (256 uint8 levels; multilabel: of every scored pixel) split by whether the truth
agrees gives, by reverse
cumulative sums, the predicted area and the intersection for every threshold at once.
"""

from kseg.errors import TuneError
from kseg.postprocess.instances import InstanceGrids, instance_grids
from kseg.postprocess.oof import OOFBuilder, OOFRun, OOFSet, class_table, load_oof
from kseg.postprocess.params import (
    AREA_FRACTIONS,
    MULTILABEL_THRESHOLDS,
    NO_CLASS,
    THRESHOLDS,
    ClassParams,
    PostProcess,
    apply,
    apply_to_labels,
    load,
    threshold_grid,
)
from kseg.postprocess.search import GridFn, SearchSpace, TuneResult, pixel_grids, tune_grids, tune_oof
from kseg.postprocess.stage import tune

__all__ = [
    "AREA_FRACTIONS",
    "MULTILABEL_THRESHOLDS",
    "NO_CLASS",
    "THRESHOLDS",
    "ClassParams",
    "GridFn",
    "InstanceGrids",
    "OOFBuilder",
    "OOFRun",
    "OOFSet",
    "PostProcess",
    "SearchSpace",
    "TuneError",
    "TuneResult",
    "apply",
    "apply_to_labels",
    "class_table",
    "instance_grids",
    "load",
    "load_oof",
    "pixel_grids",
    "threshold_grid",
    "tune",
    "tune_grids",
    "tune_oof",
]
