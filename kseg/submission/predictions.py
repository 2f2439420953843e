"""The predictions folder ``kseg submit`` reads: checked against the manifest ``kseg infer`` wrote, so a
folder from an interrupted, partial or older run is never submitted by mistake."""

from __future__ import annotations

from pathlib import Path

from kseg.errors import SubmissionError
from kseg.workspace.workdir import INFERENCE_NAME, read_inference_info


def check_manifest(
    directory: Path, image_ids: list[str], *, required: bool = True, fill_empty: bool = False
) -> tuple[set[str], str]:
    """Check a predictions folder against its ``inference.json``: every test image predicted (or skipped),
    every file as ``kseg infer`` wrote it.

    Args:
        directory: The predictions folder.
        image_ids: The test images the submission needs.
        required: Refuse a folder without a manifest (``submission.require_manifest``).
        fill_empty: Accept images that ``kseg infer`` skipped (unreadable), to be submitted empty.

    Returns:
        ``(ids to submit as empty masks, a note for the user)``.

    Raises:
        SubmissionError: No manifest (when required), an image neither predicted nor skipped, a file
            missing or changed since, or a skipped image without ``fill_empty``.
    """
    info = read_inference_info(directory)
    if info is None or "image_ids" not in info:
        if not directory.is_dir():
            raise SubmissionError(missing_folder(directory))
        if required:
            what = "has no" if info is None else "has an older kseg's"
            raise SubmissionError(
                f"{directory} {what} {INFERENCE_NAME} manifest, so kseg cannot tell which run its label maps belong "
                "to; run 'kseg infer' again, or for label maps made elsewhere set submission.require_manifest: false"
            )
        return set(), "predictions: not checked against a manifest (submission.require_manifest: false)"
    listed, skipped = set(info["image_ids"]), set(info.get("skipped_ids") or [])
    missing = [i for i in image_ids if i not in listed and i not in skipped]
    if missing:
        raise SubmissionError(
            f"{directory / INFERENCE_NAME} lists no prediction for test image {missing[0]!r} ({len(missing)} of "
            f"{len(image_ids)} missing): the folder holds another run's predictions; run 'kseg infer' for the test set"
        )
    for name, size in (info.get("files") or {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            raise SubmissionError(
                f"{path} is not the file kseg infer wrote ({'missing' if not path.is_file() else 'changed since'}); "
                "run 'kseg infer' again"
            )
    empty = {i for i in image_ids if i in skipped}
    if empty and not fill_empty:
        first = sorted(empty)[0]
        raise SubmissionError(
            f"kseg infer skipped test image {first!r} ({len(empty)} skipped, listed in {INFERENCE_NAME}); fix the "
            "image and run 'kseg infer' again, or pass --fill-empty to submit empty masks for it"
        )
    note = f"predictions: {len(image_ids)} test images checked against {directory / INFERENCE_NAME}"
    if empty:
        note += f"; {len(empty)} skipped image(s) submitted with empty masks (--fill-empty)"
    return empty, note


def missing_folder(directory: Path) -> str:
    """Why ``directory`` cannot be the predictions folder (a file, or nothing), and the fix."""
    if directory.exists():
        return f"predictions folder {directory} is a file, not a folder; give the folder 'kseg infer' wrote"
    return f"predictions folder {directory} does not exist; run 'kseg infer' first"


def find_predictions(directory: Path, image_ids: list[str]) -> list[Path]:
    """The prediction file of each test image in ``directory`` (``<id>.png`` or ``<id>.npy``)."""
    if not directory.is_dir():
        raise SubmissionError(missing_folder(directory))
    paths, missing = [], []
    for image_id in image_ids:
        for suffix in (".png", ".npy"):
            candidate = directory / f"{image_id}{suffix}"
            if candidate.is_file():
                paths.append(candidate)
                break
        else:
            missing.append(image_id)
    if missing:
        raise SubmissionError(
            f"no prediction for test image {missing[0]!r} in {directory} ({len(missing)} of {len(image_ids)} "
            "missing); run 'kseg infer' for the whole test set"
        )
    return paths
