"""describe_images tells day from night and reads stored sizes."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conserviz_utils.errors import ImageLoadError
from conserviz_utils.files.images import describe_images, is_night_shot


def _save(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path, quality=90)
    return str(path)


@pytest.fixture
def day_and_night(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, size=(90, 160, 1)).repeat(3, axis=2)
    colour = rng.integers(0, 255, size=(120, 200, 3))
    return pd.DataFrame(
        {"path": [_save(tmp_path / "night.jpg", grey), _save(tmp_path / "day.jpg", colour)]},
        index=pd.Index(["ZJ000000", "ZJ000001"], name="id"),
    )


def test_grey_stored_as_rgb_is_night_and_colour_is_day(day_and_night):
    described = describe_images(day_and_night)
    assert described["night"].tolist() == [True, False]
    assert described.loc["ZJ000001", ["width", "height"]].tolist() == [200, 120]


def test_max_images_takes_a_seeded_subset(day_and_night):
    first = describe_images(day_and_night, max_images=1, seed=3)
    assert len(first) == 1
    assert first.index.equals(describe_images(day_and_night, max_images=1, seed=3).index)


def test_unreadable_image_raises_our_error(tmp_path, day_and_night):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    features = pd.concat(
        [day_and_night, pd.DataFrame({"path": [str(broken)]}, index=pd.Index(["ZJ9"], name="id"))]
    )
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        describe_images(features)


def test_is_night_shot_on_a_sample_night_image(sample_dir):
    features = pd.read_csv(sample_dir / "train_features.csv", index_col="id")
    features["path"] = [str(sample_dir / p) for p in features["filepath"]]
    share = describe_images(features)["night"].mean()
    assert 0.15 < share < 0.7  # the sample mirrors the real data's many IR night shots
    assert not is_night_shot(Image.new("RGB", (8, 8), (200, 120, 40)))
