"""The offline notebook of a code competition: it installs kseg from the packaged dataset's wheels without
the internet, predicts the hidden test set with the packaged bundle where the config's layout puts it under
``/kaggle/input/<competition>``, writes and validates ``/kaggle/working/submission.csv``, and prints the
time each step took. ``KSEG_KAGGLE_INPUT`` and ``KSEG_KAGGLE_WORKING`` move its two roots (for a rehearsal
and the tests); nothing else in it depends on the machine that wrote it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kseg.errors import KsegError

BUNDLE_NAME = "model.kseg"
CONFIG_NAME = "kseg.yaml"
WHEELS_DIR = "wheels"


@dataclass(frozen=True)
class NotebookPlan:
    """What the notebook needs to know: where its inputs are mounted and how to predict."""

    competition: str  # the competition's slug: /kaggle/input/<competition>
    dataset: str  # the dataset's slug (the NAME of OWNER/NAME): /kaggle/input/<dataset>
    tta: str  # the TTA views (infer.tta)


SETUP = """import os, subprocess, sys, time
from pathlib import Path

INPUT = Path(os.environ.get("KSEG_KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KSEG_KAGGLE_WORKING", "/kaggle/working"))
COMPETITION = INPUT / {competition!r}
PACKAGE = INPUT / {dataset!r}
TIMES = {{}}
started = time.perf_counter()
print("competition data:", COMPETITION, "| kseg package:", PACKAGE)"""

INSTALL = """t0 = time.perf_counter()
# offline: kseg and its dependencies from the package's wheels (torch and torchvision come with the image)
WHEELS = PACKAGE / {wheels!r}
pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELS)]
done = subprocess.run([*pip, "kseg"], capture_output=True, text=True)
print(done.stdout[-3000:] + done.stderr[-3000:], end="")  # pip's own words, in the notebook's log
done.check_returncode()
TIMES["install"] = time.perf_counter() - t0
print(f"installed kseg in {{TIMES['install']:.1f}} s")"""

PREDICT = """t0 = time.perf_counter()
from kseg.config import load_config
from kseg.prediction.ensemble import load_bundle
from kseg.prediction.infer import competition_test_images, run_inference

cfg = load_config(
    PACKAGE / {config!r},
    [
        f"data.root={{COMPETITION}}",
        f"workdir={{WORKING / 'work'}}",
        f"submission.predictions={{WORKING / 'predictions'}}",
        f"submission.path={{WORKING / 'submission.csv'}}",
        "submission.solution=null",
    ],
)
images = competition_test_images(cfg.data)
ensemble = load_bundle(PACKAGE / {bundle!r})
result = run_inference(ensemble, images, WORKING / "predictions", {tta!r})
TIMES["predict"] = time.perf_counter() - t0
print(f"predicted {{result.n_images}} test images in {{TIMES['predict']:.1f}} s", f"(folds {{result.folds}})")"""

SUBMIT = """t0 = time.perf_counter()
from kseg.submission import validate_file, write_submission

written = write_submission(cfg)
report = validate_file(written.path, cfg)
TIMES["submit"] = time.perf_counter() - t0
print(f"wrote {{written.path}} in {{TIMES['submit']:.1f}} s:", "valid" if report.ok else report.first())
assert report.ok, report.first()"""

SUMMARY = """TIMES["total"] = time.perf_counter() - started
print(" | ".join(f"{{step}} {{seconds:.1f}} s" for step, seconds in TIMES.items()))"""


STEPS = ("setup", "install", "predict", "submit", "summary")  # the notebook's code cells, in order
CELLS = {"setup": SETUP, "install": INSTALL, "predict": PREDICT, "submit": SUBMIT, "summary": SUMMARY}


def require_nbformat() -> None:
    """Raises ``KsegError`` (with the install command) where nbformat is missing."""
    try:
        import nbformat  # noqa: F401
    except ImportError:
        raise KsegError('kseg package writes notebooks with nbformat; pip install -e ".[notebook]"') from None


def notebook_json(plan: NotebookPlan) -> str:
    """The notebook as nbformat 4 JSON, validated (``require_nbformat`` first)."""
    require_nbformat()
    import nbformat

    fields = {"competition": plan.competition, "dataset": plan.dataset, "tta": plan.tta, "wheels": WHEELS_DIR}
    fields.update(config=CONFIG_NAME, bundle=BUNDLE_NAME)
    cells = [
        nbformat.v4.new_markdown_cell(
            f"# {plan.competition}: kseg inference\n\nWritten by `kseg package`: installs kseg offline from "
            f"the `{plan.dataset}` dataset, predicts the test set with its bundle ({plan.tta} TTA) and writes "
            "`submission.csv`."
        ),
        *(nbformat.v4.new_code_cell(CELLS[step].format(**fields)) for step in STEPS),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata.update(
        kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
        language_info={"name": "python"},
    )
    nbformat.validate(notebook)
    return json.dumps(notebook, indent=1) + "\n"
