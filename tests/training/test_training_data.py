"""Training data: reading and checking rows (errors name the row), and the transforms of one triplet."""

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessorPil

from face_anon_training.data import (
    DatasetTriplets,
    EpochShuffleSampler,
    FaceTripletDataset,
    TrainingDataError,
    read_metadata,
    resize_and_center_crop,
)

from .training_helpers import RESOLUTION, write_triplets


ROW = {"source_image": "img/0.png", "conditioning_image": "img/1.png", "ground_truth": "img/2.png"}


@pytest.fixture(scope="module")
def feature_extractor(base_model):
    return CLIPImageProcessorPil.from_pretrained(base_model[1])


def test_metadata_rows_resolve_paths(train_data_dir):
    rows = read_metadata(train_data_dir)
    assert len(rows) == 3
    assert rows[1].row == "metadata.jsonl line 2"
    assert rows[1].images["source_image"] == str(train_data_dir / "img" / "3.png")


@pytest.mark.parametrize(
    "records, expected",
    [
        (
            [ROW, dict(ROW, ground_truth="img/missing.png")],
            r"line 2: column ground_truth: image 'img/missing.png' not found",
        ),
        (
            [ROW, ROW, {k: v for k, v in ROW.items() if k != "source_image"}],
            r"line 3: missing column\(s\) source_image",
        ),
        (['{"source_image": "img/0.png",'], r"line 1: not valid JSON"),
        ([dict(ROW, conditioning_image="")], r"line 1: column conditioning_image must be a non-empty image path"),
        ([], r"holds no rows: the training set is empty"),
    ],
    ids=["missing-image", "missing-column", "bad-json", "empty-path", "empty-dataset"],
)
def test_bad_metadata_names_the_row(tmp_path, records, expected):
    folder = write_triplets(tmp_path, records=records)
    with pytest.raises(TrainingDataError, match=expected):
        read_metadata(folder)


def test_every_bad_row_is_reported_at_once(tmp_path):
    records = [dict(ROW, source_image="img/a.png"), ROW, dict(ROW, ground_truth="img/b.png")]
    with pytest.raises(TrainingDataError) as error:
        read_metadata(write_triplets(tmp_path, records=records))
    assert "2 problem(s)" in str(error.value)
    assert "line 1" in str(error.value) and "line 3" in str(error.value) and "line 2" not in str(error.value)


def test_missing_folder_and_metadata_are_named(tmp_path):
    with pytest.raises(TrainingDataError, match="is not a folder"):
        read_metadata(tmp_path / "nowhere")
    with pytest.raises(TrainingDataError, match="has no metadata.jsonl"):
        read_metadata(tmp_path)


def test_unreadable_image_names_row_and_column(tmp_path, feature_extractor):
    folder = write_triplets(tmp_path, records=[ROW])
    (folder / "img" / "1.png").write_bytes(b"not a png")
    dataset = FaceTripletDataset(read_metadata(folder), RESOLUTION, feature_extractor)
    with pytest.raises(TrainingDataError, match=r"metadata.jsonl line 1: column conditioning_image: cannot read image"):
        dataset[0]


def test_misaligned_driving_image_and_ground_truth_name_the_row(tmp_path, feature_extractor):
    folder = write_triplets(tmp_path, records=[ROW])
    PIL.Image.new("RGB", (40, 30)).save(folder / "img" / "2.png")  # ground truth: another aspect ratio
    dataset = FaceTripletDataset(read_metadata(folder), RESOLUTION, feature_extractor)
    with pytest.raises(TrainingDataError, match=r"line 1: conditioning_image is 40x40 but ground_truth is 40x30"):
        dataset[0]


def test_other_sizes_are_resized_and_centre_cropped_as_documented():
    image = torch.rand(3, 40, 48)
    out = resize_and_center_crop(image, 32)
    # shorter side 40 -> 32, longer 48 -> int(32 * 48 / 40) = 38, then the central 32 columns: 3 .. 34
    resized = F.interpolate(image[None], size=(32, 38), mode="bilinear", align_corners=False, antialias=True)[0]
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, resized[:, :, 3:35])
    # portrait, and smaller than the resolution (upscaled): 20 x 16 -> 40 x 32, rows 4 .. 35
    small = torch.rand(3, 20, 16)
    upscaled = F.interpolate(small[None], size=(40, 32), mode="bilinear", align_corners=False, antialias=True)[0]
    assert torch.equal(resize_and_center_crop(small, 32), upscaled[:, 4:36, :])
    # at the target size nothing changes; a flat colour stays that colour whatever the resize
    same = torch.rand(3, 32, 32)
    assert torch.equal(resize_and_center_crop(same, 32), same)
    flat = torch.full((3, 57, 91), 0.25)
    assert torch.allclose(resize_and_center_crop(flat, 32), torch.full((3, 32, 32), 0.25), atol=1e-6)


def test_triplet_tensors(train_data_dir, feature_extractor):
    """VAE inputs in [-1, 1] at the resolution; CLIP inputs exactly the processor's output for the [0, 1] image
    (as at inference); no CLIP input for the ground truth."""
    dataset = FaceTripletDataset(read_metadata(train_data_dir), RESOLUTION, feature_extractor)
    item = dataset[0]
    assert set(item) == {"source_image", "conditioning_image", "ground_truth", "source_clip", "conditioning_clip"}
    source = PIL.Image.open(train_data_dir / "img" / "0.png").convert("RGB")
    expected01 = resize_and_center_crop(torch.from_numpy(np.asarray(source, np.float32) / 255).permute(2, 0, 1), 32)
    assert item["source_image"].shape == (3, RESOLUTION, RESOLUTION)
    assert torch.allclose(item["source_image"], expected01 * 2 - 1, atol=1e-6)
    assert item["source_image"].min() >= -1 and item["source_image"].max() <= 1
    clip = feature_extractor(images=expected01, do_rescale=False, return_tensors="pt").pixel_values[0]
    assert torch.allclose(item["source_clip"], clip, atol=1e-6)


def test_flip_is_one_coin_per_triplet_and_redrawn_each_epoch(train_data_dir, feature_extractor):
    dataset = FaceTripletDataset(read_metadata(train_data_dir), RESOLUTION, feature_extractor, random_flip=True)
    plain = FaceTripletDataset(read_metadata(train_data_dir), RESOLUTION, feature_extractor)[0]
    outcomes = []
    for epoch in range(50):
        dataset.set_epoch(epoch)
        item = dataset[0]
        # (square photos: flipping before or after the resize differs by rounding only)
        flipped = {
            column: torch.allclose(item[column], plain[column].flip(-1), atol=1e-6)
            for column in ("source_image", "conditioning_image", "ground_truth")
        }
        unflipped = {column: torch.equal(item[column], plain[column]) for column in flipped}
        assert all(flipped.values()) or all(unflipped.values()), f"epoch {epoch}: {flipped}"
        outcomes.append(all(flipped.values()))
        assert dataset.flips(0) == outcomes[-1]
    assert 10 < sum(outcomes) < 40  # both outcomes, near one half
    dataset.set_epoch(7)  # a row's coin depends only on (seed, epoch, row)
    again = FaceTripletDataset(read_metadata(train_data_dir), RESOLUTION, feature_extractor, random_flip=True)
    again.set_epoch(7)
    assert again.flips(0) == outcomes[7]


def test_shuffle_order_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(10, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(10))
    assert orders[0] != orders[1] != orders[2]
    other = EpochShuffleSampler(10, seed=3)
    other.set_epoch(1)
    assert list(other) == orders[1]


def _image_dataset(train_data_dir, rows):
    features = datasets.Features({column: datasets.Image() for column in ROW})
    columns = {column: [None if row is None else str(train_data_dir / row[column]) for row in rows] for column in ROW}
    return datasets.Dataset.from_dict(columns, features=features)


def test_datasets_dataset_rows(train_data_dir, feature_extractor):
    triplets = DatasetTriplets(_image_dataset(train_data_dir, [ROW, ROW]), name="my-dataset")
    assert len(triplets) == 2 and triplets[1].row == "my-dataset row 1"
    item = FaceTripletDataset(triplets, RESOLUTION, feature_extractor)[1]
    from_folder = FaceTripletDataset(read_metadata(train_data_dir), RESOLUTION, feature_extractor)[0]
    for column in item:
        assert torch.equal(item[column], from_folder[column])


def test_datasets_dataset_errors_name_column_and_row(train_data_dir):
    dataset = _image_dataset(train_data_dir, [ROW, ROW, ROW])
    with pytest.raises(TrainingDataError, match=r"has no column\(s\) ground_truth"):
        DatasetTriplets(dataset.remove_columns("ground_truth"), name="my-dataset")
    with pytest.raises(TrainingDataError, match=r"my-dataset row 2: column source_image is empty"):
        DatasetTriplets(_image_dataset(train_data_dir, [ROW, ROW, None]), name="my-dataset")
    with pytest.raises(TrainingDataError, match="holds no rows"):
        DatasetTriplets(dataset.select([]), name="my-dataset")
