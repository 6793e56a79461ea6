"""Images of any shape: folders keep their colours and size, --image-size fits every image to
N×N (shorter side, centre crop), mixed sizes get a stated default, undecodable images are
skipped with a note (or refused with strict_images), and normalisation is per channel."""

import numpy as np
import pytest
import torch
from PIL import Image

from batchlab.core.errors import DataError
from batchlab.data.device import Normalize, channel_stats
from batchlab.data.imagefolder import load_folder
from batchlab.data.registry import load
from batchlab.nn.texts import shape_text

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write(folder, name, image):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / (name.replace(".png", ".jpg") if image.mode == "CMYK" else name))  # PNG has no CMYK


def two_classes(root, make, count=4):
    """root/a and root/b, `count` images each from make(class_index, i)."""
    for label, cls in enumerate("ab"):
        for i in range(count):
            write(root / cls, f"{i}.png", make(label, i))
    return root


def test_rgb_folder_keeps_colours_and_size(tmp_path):
    root = two_classes(tmp_path / "rgb", lambda label, i: Image.new("RGB", (40, 30), (RED, GREEN)[label]))
    dataset = load_folder(str(root))
    assert dataset.input_shape == (3, 30, 40)  # C, H, W: width 40, height 30
    pixels = np.concatenate([dataset.train_images, dataset.test_images])
    labels = np.concatenate([dataset.train_labels, dataset.test_labels])
    assert (pixels[labels == 0][:, :, 0, 0] == RED).all() and (pixels[labels == 1][:, :, 0, 0] == GREEN).all()


def test_gray_folder_stays_one_channel_and_other_modes_become_rgb(tmp_path):
    gray = two_classes(tmp_path / "gray", lambda label, i: Image.new("L", (20, 20), 50 + 100 * label))
    assert load_folder(str(gray)).input_shape == (1, 20, 20)

    def mixed(label, i):  # RGBA, palette and CMYK among gray ones: the dataset is RGB
        kinds = [Image.new("RGBA", (20, 20), (*BLUE, 128)), Image.new("L", (20, 20), 200),
                 Image.new("RGB", (20, 20), BLUE).convert("P"), Image.new("RGB", (20, 20), BLUE).convert("CMYK")]
        return kinds[i]

    dataset = load_folder(str(two_classes(tmp_path / "mixed", mixed)))
    assert dataset.input_shape == (3, 20, 20)
    colours = {tuple(int(v) for v in image[:, 0, 0]) for image in np.concatenate([dataset.train_images,
                                                                                   dataset.test_images])}
    assert colours == {BLUE, (200, 200, 200)}  # alpha dropped, palette and CMYK decoded, gray repeated


def test_image_size_scales_the_shorter_side_and_crops_the_centre(tmp_path):
    def stripes(label, i):  # 60 wide, 20 high: thirds red | green | blue
        image = Image.new("RGB", (60, 20), RED)
        image.paste(GREEN, (20, 0, 40, 20))
        image.paste(BLUE, (40, 0, 60, 20))
        return image

    dataset = load_folder(str(two_classes(tmp_path / "wide", stripes)), image_size=10)
    assert dataset.input_shape == (3, 10, 10)
    # 60×20 → 30×10, centre 10 columns = the green third.
    assert (dataset.train_images[:, :, :, 2:8] == np.array(GREEN, dtype=np.uint8)[:, None, None]).all()


def test_mixed_sizes_get_the_most_common_shorter_side_and_a_note(tmp_path):
    sizes = [(32, 32), (32, 32), (64, 48), (32, 40)]
    root = two_classes(tmp_path / "sizes", lambda label, i: Image.new("L", sizes[i], 100))
    dataset = load_folder(str(root))
    assert dataset.input_shape == (1, 32, 32)
    assert len(dataset.notes) == 1 and "3 sizes" in dataset.notes[0] and "--image-size" in dataset.notes[0]
    assert load_folder(str(root), image_size=24).notes == ()  # chosen by the user: nothing to say


def test_undecodable_images_are_skipped_counted_and_named_or_refused_when_strict(tmp_path):
    root = two_classes(tmp_path / "broken", lambda label, i: Image.new("L", (16, 16), 30 + 100 * label), count=6)
    (root / "a" / "notanimage.png").write_bytes(b"this is text")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[:len(good) // 2])
    dataset = load_folder(str(root))
    assert len(dataset.train_labels) + len(dataset.test_labels) == 12
    assert len(dataset.skipped) == 2 and {"notanimage.png", "truncated.png"} == {
        s.split(" (")[0].rsplit("/", 1)[-1] for s in dataset.skipped}
    assert any(note.startswith("skipped 2 image(s)") for note in dataset.notes)
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be decoded \(--strict-images\).*notanimage.png"):
        load_folder(str(root), strict_images=True)


def test_a_class_with_only_undecodable_images_is_refused(tmp_path):
    root = two_classes(tmp_path / "lost", lambda label, i: Image.new("L", (16, 16), 0))
    for path in (root / "b").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable training images in class\\(es\\) b"):
        load_folder(str(root))


def test_image_size_resizes_a_registered_dataset(synthetic_dataset):
    folder = synthetic_dataset.directory
    dataset = load(synthetic_dataset.name, folder, image_size=32)
    assert dataset.input_shape == (1, 32, 32) and shape_text(dataset.input_shape) == "1x32x32"
    assert load(synthetic_dataset.name, folder).input_shape == (1, 28, 28)


def test_normalisation_is_per_channel():
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 50, (300, 8, 8)), rng.integers(100, 255, (300, 8, 8)),
                       np.full((300, 8, 8), 7)], axis=1).astype(np.uint8)
    mean, std = channel_stats(images)
    assert np.allclose(mean, images.mean(axis=(0, 2, 3))) and np.allclose(std[:2], images.std(axis=(0, 2, 3))[:2])
    assert std[2] == 1.0  # a constant channel is not divided by zero
    normalized = Normalize(mean, std)(torch.from_numpy(images))
    assert normalized.dtype == torch.float32
    assert torch.allclose(normalized.mean(dim=(0, 2, 3))[:2], torch.zeros(2), atol=1e-4)
    assert torch.allclose(normalized.std(dim=(0, 2, 3), unbiased=False)[:2], torch.ones(2), atol=1e-4)
    one = Normalize((10.0,), (2.0,))(torch.full((1, 1, 2, 2), 14, dtype=torch.uint8))
    assert torch.equal(one, torch.full((1, 1, 2, 2), 2.0))


def test_rgb_folder_trains_end_to_end_and_reports_its_shape(tmp_path):
    """A colour folder with one corrupt image trains (seed-cnn sized for 3x24x24), the note is
    printed, the skip is stored, and report JSON rows carry input_shape."""
    import json
    import sqlite3

    from typer.testing import CliRunner

    from batchlab.cli.app import app

    rng = np.random.default_rng(0)
    root = two_classes(tmp_path / "colour", lambda label, i: Image.fromarray(
        np.clip(rng.normal(0, 20, (24, 24, 3)) + (RED, BLUE)[label], 0, 255).astype(np.uint8)), count=12)
    (root / "a" / "zz-corrupt.png").write_bytes(b"\x89PNG not really")
    db = tmp_path / "s.db"
    done = CliRunner().invoke(app, ["train", "--dataset", f"folder:{root}", "--model", "seed-cnn", "--batch-size", "4",
                                    "--epochs", "1", "--threads", "1", "--db", str(db)])
    assert done.exit_code == 0, done.output
    assert "note:" in done.output and "skipped 1 image(s)" in done.output and "zz-corrupt.png" in done.output
    with sqlite3.connect(db) as con:
        shape, skipped, environment = con.execute("SELECT input_shape, skipped_images, environment FROM runs").fetchone()
    assert (shape, skipped) == ("3x24x24", 1)
    assert "zz-corrupt.png" in json.loads(environment)["skipped_image_examples"][0]
    rows = json.loads(CliRunner().invoke(app, ["report", "--db", str(db), "--format", "json"]).output)
    assert rows[0]["input_shape"] == "3x24x24"
