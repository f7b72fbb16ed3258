"""The model card's gallery: before/after pairs of example photos rendered with the model, as ``widget``
entries (``src`` and ``output.url``) that ``huggingface_hub.ModelCard`` reads back."""

import numpy as np
import pytest

from face_anon import AnonymizeOptions, InputError
from face_anon.apps.gallery import gallery_photos, render_gallery

from .app_helpers import TWO_FACES, decode, save, two_faces


@pytest.fixture
def examples(tmp_path):
    import skimage.data

    folder = tmp_path / "examples-in"
    folder.mkdir()
    save(two_faces(seed=8), folder / "two people.png")
    save(skimage.data.astronaut()[20:320, 80:380], folder / "astronaut.jpg", quality=95)
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


def test_the_gallery_photos_are_the_folders_photos(examples, tmp_path):
    assert [p.name for p in gallery_photos(examples)] == ["astronaut.jpg", "two people.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--examples: .* holds no photo"):
        gallery_photos(tmp_path / "empty")


def test_pairs_are_rendered_and_the_card_lists_them(tiny_pipeline, examples, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    repo = tmp_path / "repo"
    options = AnonymizeOptions(num_inference_steps=2)
    entries = render_gallery(tiny_pipeline, gallery_photos(examples), repo, options=options)
    assert entries == [
        {"src": "examples/astronaut.jpg", "output": {"url": "examples/astronaut_anonymized.jpg"}},
        {"src": "examples/two_people.jpg", "output": {"url": "examples/two_people_anonymized.jpg"}},
    ]
    card = ModelCard.from_template(ModelCardData(pipeline_tag="image-to-image", widget=entries))
    card.save(repo / "README.md")
    assert ModelCard.load(repo / "README.md").data.widget == entries
    for entry in entries:
        assert (repo / entry["src"]).is_file() and (repo / entry["output"]["url"]).is_file()

    original = two_faces(seed=8).astype(int)
    before = decode(repo / "examples" / "two_people.jpg").astype(int)
    after = decode(repo / "examples" / "two_people_anonymized.jpg").astype(int)
    assert np.abs(before - original).mean() < 3  # the photo itself (JPEG)
    for placement in TWO_FACES:
        x, y = map(int, placement.centre)
        assert np.abs(after - before)[y - 25 : y + 25, x - 20 : x + 20].mean() > 20  # each face replaced
    assert np.abs(after - before)[:, 235:245].mean() < 3  # between the faces: as it was


def test_a_photo_without_a_face_is_refused_by_name(tiny_pipeline, tmp_path):
    empty = save(np.full((120, 160, 3), 90, np.uint8), tmp_path / "wall.png")
    with pytest.raises(InputError, match="wall.png' cannot be shown in the gallery: no face was found"):
        render_gallery(tiny_pipeline, [empty], tmp_path / "repo", options=AnonymizeOptions(num_inference_steps=2))


def test_convert_weights_examples_puts_the_gallery_in_the_repository_and_its_card(fixture_dir, examples, tmp_path):
    from huggingface_hub import ModelCard

    import convert_weights

    out = tmp_path / "converted"
    sources = ["--face-model", str(fixture_dir / "face_model"), "--sd-model", str(fixture_dir / "sd")]
    sources += ["--clip-model", str(fixture_dir / "clip")]
    status = convert_weights.main(
        [*sources, "--output-dir", str(out), "--examples", str(examples), "--examples-steps", "2"]
    )
    assert status == 0
    widget = ModelCard.load(out / "README.md").data.widget
    assert widget == [
        {"src": "examples/astronaut.jpg", "output": {"url": "examples/astronaut_anonymized.jpg"}},
        {"src": "examples/two_people.jpg", "output": {"url": "examples/two_people_anonymized.jpg"}},
    ]
    for entry in widget:
        before, after = decode(out / entry["src"]), decode(out / entry["output"]["url"])
        assert before.shape == after.shape and np.abs(before.astype(int) - after).mean() > 1  # faces replaced
    # The gallery is part of what was verified and would be uploaded.
    assert {"examples/astronaut.jpg", "examples/two_people_anonymized.jpg"} <= set(convert_weights.relative_files(out))


def test_convert_weights_refuses_an_examples_folder_without_photos(tmp_path, capsys):
    import convert_weights

    (tmp_path / "none").mkdir()
    with pytest.raises(SystemExit) as exit_:
        convert_weights.main(["--output-dir", str(tmp_path / "out"), "--examples", str(tmp_path / "none")])
    assert exit_.value.code == 2 and "--examples" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
