"""``kseg package --push``: the package's dataset created (or a new version of it) and its notebook pushed
through the ``kaggle`` package's API (the ``[kaggle]`` extra), then the kernel's URL and how to submit its
output. The API object is the boundary: the tests give a stand-in with the same methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kseg.errors import KsegError


@dataclass
class Pushed:
    """What ``push_package`` did on Kaggle."""

    dataset: str
    new_dataset: bool  # created, or a new version of an existing one
    kernel_url: str
    submit_hint: str


def push_package(dataset_dir: Path, notebook_dir: Path, dataset: str, kernel_id: str, competition: str,
                 message: str, api: Any = None) -> Pushed:  # fmt: skip
    """Create or version the dataset from ``dataset_dir`` (its subfolders zipped, so ``wheels/`` travels),
    then push the notebook in ``notebook_dir``.

    Raises:
        KsegError: No Kaggle credentials (from ``kaggle_api``), or Kaggle refused an upload (its words).
    """
    if api is None:
        from kseg.submission.kaggle import kaggle_api

        api = kaggle_api()
    try:
        api.dataset_status(dataset)
        exists = True
    except Exception:  # the API raises for a dataset it does not know
        exists = False
    try:
        if exists:
            response = api.dataset_create_version(str(dataset_dir), message, dir_mode="zip")
        else:
            response = api.dataset_create_new(str(dataset_dir), public=False, dir_mode="zip")
    except Exception as exc:
        raise KsegError(f"Kaggle refused the dataset {dataset} ({exc}); check the id and your credentials") from None
    _check(response, f"the dataset {dataset}")
    try:
        response = api.kernels_push(str(notebook_dir))
    except Exception as exc:
        raise KsegError(f"Kaggle refused the notebook {kernel_id} ({exc}); check kernel-metadata.json's id") from None
    _check(response, f"the notebook {kernel_id}")
    url = getattr(response, "url", None) or f"https://www.kaggle.com/code/{kernel_id}"
    hint = (
        f"when the notebook has run, submit its output: on {url}, Output -> Submit to competition, or "
        f"kaggle competitions submit {competition} -k {kernel_id} -f submission.csv -m '{message}'"
    )
    return Pushed(dataset, not exists, url, hint)


def _check(response: Any, what: str) -> None:
    error = getattr(response, "error", None) if not isinstance(response, dict) else response.get("error")
    if error:
        raise KsegError(f"Kaggle refused {what}: {error}; fix it and push again")
