"""Bringing images to one size: scale so the image covers the target (the shorter side meets it,
aspect kept), then crop the centre. `--image-size N` does this for every dataset; folders of mixed
sizes use it too (imagefolder.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .dataset import Dataset


def fit_image(image, height: int, width: int):
    """A PIL image scaled (bilinear, aspect kept) until it covers height × width, then cropped
    to that size around its centre; unchanged if it is that size already."""
    from PIL import Image

    if image.size == (width, height):
        return image
    scale = max(height / image.height, width / image.width)
    scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if scaled != image.size:
        image = image.resize(scaled, Image.Resampling.BILINEAR)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def fit_array(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 images (N, C, H, W), each fitted to side × side."""
    from PIL import Image

    channels = images.shape[1]
    if images.shape[2:] == (side, side):
        return images
    out = np.empty((len(images), channels, side, side), dtype=np.uint8)
    for index, image in enumerate(images):
        picture = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0))
        fitted = np.asarray(fit_image(picture, side, side))
        out[index] = fitted[None] if channels == 1 else fitted.transpose(2, 0, 1)
    return out


def resized(dataset: Dataset, side: int) -> Dataset:
    """`dataset` with every image fitted to side × side (a registered dataset under --image-size).
    The checksum stays the one of the files read; the size is recorded with the run apart."""
    if not side or dataset.input_shape[1:] == (side, side):
        return dataset
    return dataclasses.replace(dataset, train_images=fit_array(dataset.train_images, side),
                               test_images=fit_array(dataset.test_images, side))
