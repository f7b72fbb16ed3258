"""Photo sets for the evaluation tests: the three test people, and their anonymized versions."""

from pathlib import Path

import numpy as np
import PIL.Image
from identity import identity_helpers as people


PHOTOS = {
    "astronaut.png": people.astronaut,
    "cameraman.png": people.cameraman,
    "people/hopper.png": people.hopper,  # pairs by relative path below the folders
}

# The test people's faces score 0.80-0.93. At 0.5 the detector's border passes add no false alarm (one
# scores 0.31 in a corner of the astronaut's photo), so every set holds exactly the three people.
DETECTOR_THRESHOLD = 0.5


def anonymize_folder(originals: Path, folder: Path, detector, options, pipeline=None) -> Path:
    """Every photo of ``originals`` through ``anonymize_photos``, written below ``folder`` (PNG, lossless)."""
    from face_anon.orchestration.photo import anonymize_photos

    for name in PHOTOS:
        image = np.asarray(PIL.Image.open(originals / name).convert("RGB"))
        (result,) = anonymize_photos([image], detector=detector, pipeline=pipeline, options=options)
        assert result.image is not None, result.error
        people.save(np.asarray(result.image), folder / name)
    return folder
