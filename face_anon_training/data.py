# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""Training triplets: reading and checking them, and turning one into the tensors a training step takes.

A row names three images (the columns of `COLUMNS`):

- `source_image`: the identity to show (to the source ReferenceNet and the UNet's first CLIP token);
- `conditioning_image`: the driving image, whose pose, expression, gaze, hair, background and lighting stay;
- `ground_truth`: the image to generate, the source identity in the driving image, pixel-aligned with it.

Rows come from a folder with `metadata.jsonl` (`read_metadata`, paths relative to the folder) or from a `datasets`
dataset with those image columns (`DatasetTriplets`). Every problem found is a `TrainingDataError` naming the row.
"""

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F


COLUMNS = ("source_image", "conditioning_image", "ground_truth")
METADATA_FILE = "metadata.jsonl"
# Purposes of derived seeds (`derive_seed`), so that the streams drawn from one `--seed` never coincide: the order of
# rows, the flips, a step's VAE posterior noise, timesteps and noise, and a step's source dropout.
SHUFFLE_STREAM, FLIP_STREAM, NOISE_STREAM, DROPOUT_STREAM = 1, 2, 3, 4
_MAX_LISTED_PROBLEMS = 20
# The driving image and the ground truth must be pixel-aligned: their aspect ratios may differ by rounding only.
_ASPECT_TOLERANCE = 0.01


class TrainingDataError(ValueError):
    """A training row that cannot be used; the message names the row (and the column and file)."""


def derive_seed(seed: int, *keys: int) -> int:
    """A 64-bit seed for the random stream named by `keys` (a purpose, then e.g. an epoch and an index), derived
    from the run's `seed`; distinct keys give independent streams, so no draw depends on the order of others."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0])


@dataclass(frozen=True)
class Triplet:
    """One training row. `row` says where it came from, for error messages ("metadata.jsonl line 3"); `images`
    holds, per column, a file path or an image (PIL, array, or a `datasets` `{"bytes", "path"}` dict)."""

    row: str
    images: dict[str, Any]


def _raise_problems(what: str, problems: list[str]) -> None:
    if not problems:
        return
    listed = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more" if len(problems) > _MAX_LISTED_PROBLEMS else ""
    raise TrainingDataError(f"{what}: {len(problems)} problem(s):\n  {listed}{more}")


def read_metadata(train_data_dir: str | os.PathLike, columns: Sequence[str] = COLUMNS) -> list[Triplet]:
    """The rows of `train_data_dir/metadata.jsonl`, each a JSON object naming its images by paths relative to
    `train_data_dir` (absolute paths are taken as they are). Blank lines are skipped. `columns` are the keys of the
    source, driving and ground-truth images in the file, in that order; the triplets key them by `COLUMNS`.

    Every row is checked before training starts: valid JSON, every column present as a non-empty string, every
    file present. All problems are reported at once, each naming its line.

    Raises:
        TrainingDataError: the folder or its `metadata.jsonl` is missing, a row is bad, or there is no row.
    """
    train_data_dir = os.fspath(train_data_dir)
    if not os.path.isdir(train_data_dir):
        raise TrainingDataError(f"--train_data_dir {train_data_dir!r} is not a folder.")
    metadata = os.path.join(train_data_dir, METADATA_FILE)
    if not os.path.isfile(metadata):
        raise TrainingDataError(
            f"--train_data_dir {train_data_dir!r} has no {METADATA_FILE}; it needs one JSON object per line with the "
            f"keys {', '.join(columns)} (image paths relative to the folder)."
        )
    triplets, problems = [], []
    with open(metadata, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = f"{METADATA_FILE} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"{row}: not valid JSON ({error.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"{row}: expected a JSON object with keys {', '.join(columns)}")
                continue
            missing = [column for column in columns if column not in record]
            if missing:
                problems.append(
                    f"{row}: missing column(s) {', '.join(missing)} (the row has: {', '.join(record) or 'nothing'})"
                )
                continue
            images = {}
            for key, column in zip(COLUMNS, columns):
                value = record[column]
                if not isinstance(value, str) or not value.strip():
                    problems.append(f"{row}: column {column} must be a non-empty image path, got {value!r}")
                    continue
                path = os.path.join(train_data_dir, value)
                if not os.path.isfile(path):
                    problems.append(f"{row}: column {column}: image {value!r} not found (looked for {path})")
                    continue
                images[key] = path
            if len(images) == len(columns):
                triplets.append(Triplet(row, images))
    _raise_problems(metadata, problems)
    if not triplets:
        raise TrainingDataError(f"{metadata} holds no rows: the training set is empty.")
    return triplets


class DatasetTriplets(Sequence):
    """The rows of a `datasets.Dataset` with the three image columns, read lazily (images decode when a row is
    taken). The columns and empty cells are checked up front, without decoding any image. `columns` name the
    source, driving and ground-truth columns, in that order; the triplets key them by `COLUMNS`.

    Raises:
        TrainingDataError: a column is missing, a cell is empty, or the dataset has no row.
    """

    def __init__(self, dataset: Any, columns: Sequence[str] = COLUMNS, name: str = "the dataset") -> None:
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            raise TrainingDataError(
                f"{name} has no column(s) {', '.join(missing)} (it has: {', '.join(dataset.column_names)}); "
                "name the columns with --source_image_column, --conditioning_image_column and --ground_truth_column."
            )
        if len(dataset) == 0:
            raise TrainingDataError(f"{name} holds no rows: the training set is empty.")
        problems, start = [], 0
        for table in dataset.select_columns(list(columns)).with_format("arrow").iter(batch_size=4096):
            for column in columns:
                empty = np.flatnonzero(table.column(column).is_null().to_numpy(zero_copy_only=False))
                problems += [f"{name} row {start + int(i)}: column {column} is empty" for i in empty]
            start += table.num_rows
        _raise_problems(name, sorted(problems))
        self.dataset = dataset
        self.columns = tuple(columns)
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Triplet:
        record = self.dataset[int(index)]
        return Triplet(f"{self.name} row {index}", {key: record[column] for key, column in zip(COLUMNS, self.columns)})


def open_image(value: Any, row: str, column: str) -> PIL.Image.Image:
    """One cell as an RGB PIL image, upright (EXIF orientation applied, as `diffusers.utils.load_image` does at
    inference); grayscale and RGBA become RGB."""
    try:
        if isinstance(value, dict):  # a `datasets` Image cell that was not decoded
            value = value.get("path") if value.get("bytes") is None else io.BytesIO(value["bytes"])
        if isinstance(value, np.ndarray):
            image = PIL.Image.fromarray(value)
        elif isinstance(value, PIL.Image.Image):
            image = value
        else:
            image = PIL.Image.open(value)
            image.load()
        return PIL.ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, TypeError, AttributeError) as error:
        shown = value if isinstance(value, (str, os.PathLike)) else type(value).__name__
        raise TrainingDataError(f"{row}: column {column}: cannot read image {shown!r} ({error}).") from error


def resize_and_center_crop(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """`[3, H, W]` floats -> `[3, resolution, resolution]`: the shorter side resized to `resolution` (bilinear,
    antialiased; the longer side to `int(resolution * long / short)`), then the central square cropped (the
    top-left corner at the rounded half of the excess). The authors' training transform; an image already at the
    target size is returned unchanged."""
    height, width = image.shape[-2:]
    if height <= width:
        size = (resolution, int(resolution * width / height))
    else:
        size = (int(resolution * height / width), resolution)
    if size != (height, width):
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    top = int(round((size[0] - resolution) / 2.0))
    left = int(round((size[1] - resolution) / 2.0))
    return image[:, top : top + resolution, left : left + resolution]


class FaceTripletDataset(torch.utils.data.Dataset):
    """Training triplets as tensors, transformed on the fly:

    1. one coin per triplet (p = 0.5, with `random_flip`) flips all three images horizontally, or none;
    2. each image: `resize_and_center_crop` to `resolution`, floats in [0, 1];
    3. the VAE inputs (`source_image`, `conditioning_image`, `ground_truth`) are those mapped to [-1, 1];
    4. the CLIP inputs (`source_clip`, `conditioning_clip`) are the [0, 1] images through `feature_extractor` with
       `do_rescale=False`, exactly as the pipeline prepares CLIP's input at inference.

    The coin of row `i` in epoch `e` comes from a stream derived from `(seed, e, i)`, so a row's transform depends
    on neither the order of rows nor data-loader workers, and a resumed run draws what an uninterrupted one does.
    Call `set_epoch` before each epoch.
    """

    def __init__(
        self,
        triplets: Sequence[Triplet],
        resolution: int,
        feature_extractor: Any,
        random_flip: bool = False,
        seed: int = 0,
    ) -> None:
        if len(triplets) == 0:
            raise TrainingDataError("the training set is empty.")
        self.triplets = triplets
        self.resolution = resolution
        self.feature_extractor = feature_extractor
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.triplets)

    def flips(self, index: int) -> bool:
        """Whether row `index` is flipped in the current epoch."""
        if not self.random_flip:
            return False
        generator = torch.Generator().manual_seed(derive_seed(self.seed, FLIP_STREAM, self.epoch, index))
        return bool(torch.rand((), generator=generator) < 0.5)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        triplet = self.triplets[index]
        images = {column: open_image(value, triplet.row, column) for column, value in triplet.images.items()}
        self._check_alignment(triplet.row, images)
        flip = self.flips(index)
        item = {}
        for column, image in images.items():
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
            if flip:
                pixels = pixels.flip(-1)
            pixels = resize_and_center_crop(pixels, self.resolution).contiguous()
            item[column] = pixels * 2.0 - 1.0
            if column != "ground_truth":  # CLIP never sees the ground truth
                clip = self.feature_extractor(images=pixels, do_rescale=False, return_tensors="pt").pixel_values
                item[f"{column.removesuffix('_image')}_clip"] = clip[0]
        return item

    @staticmethod
    def _check_alignment(row: str, images: dict[str, PIL.Image.Image]) -> None:
        """The driving image and the ground truth are one pixel-aligned scene: sizes may differ (both are resized),
        aspect ratios may not (their crops would show different parts)."""
        (driving_w, driving_h), (truth_w, truth_h) = images["conditioning_image"].size, images["ground_truth"].size
        if abs(driving_w * truth_h - truth_w * driving_h) > _ASPECT_TOLERANCE * driving_h * truth_h:
            raise TrainingDataError(
                f"{row}: conditioning_image is {driving_w}x{driving_h} but ground_truth is {truth_w}x{truth_h}; "
                "they must show the same pixel-aligned scene (equal aspect ratios)."
            )


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """Row indices in a fresh random order each epoch, the order drawn from a stream derived from
    `(seed, epoch)`: every process sees the same order (accelerate gives each its shard), and a resumed run sees
    the order an uninterrupted one saw. Call `set_epoch` before each epoch."""

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        order = torch.Generator().manual_seed(derive_seed(self.seed, SHUFFLE_STREAM, self.epoch))
        return iter(torch.randperm(self.num_rows, generator=order).tolist())
