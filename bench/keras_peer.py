"""Keras 3 on TensorFlow, as the original TensorFlow batch-size study used it: model.fit and
model.predict on the same network and data. Run inside the optional TensorFlow environment
(`make bench-tf`), once per batch size so that bench/run.py can time it next to the other loops;
prints one JSON object on stdout: {"keras": version, "rates": [images/s of each repeat]}.

    python keras_peer.py DATA.npz train|infer BATCH REPEATS
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def seed_cnn() -> keras.Model:
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 4, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 4, activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dropout(0.5),
        keras.layers.Dense(500, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(10),
    ])


def train_rates(images: np.ndarray, labels: np.ndarray, batch: int, repeats: int) -> list[float]:
    """One shuffled pass over as many images as batchlab's benchmark trains on, per repeat."""
    count = min(len(images), max(4 * batch, 2048))
    model = seed_cnn()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[:batch * 2], labels[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(images[:count], labels[:count], batch_size=batch, epochs=1, verbose=0, shuffle=True)
        rates.append(count / (time.perf_counter() - start))
    return rates


def infer_rates(images: np.ndarray, batch: int, repeats: int) -> list[float]:
    tiled = images[np.arange(max(batch, 2048)) % len(images)]
    model = seed_cnn()
    model.predict(tiled[:batch], batch_size=batch, verbose=0)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(tiled, batch_size=batch, verbose=0)
        rates.append(len(tiled) / (time.perf_counter() - start))
    return rates


def main() -> None:
    data_file, mode, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = np.load(data_file)
    images = data["images"].reshape(-1, 28, 28, 1)
    rates = train_rates(images, data["labels"], batch, repeats) if mode == "train" else infer_rates(images, batch, repeats)
    print(json.dumps({"keras": keras.__version__, "rates": rates}))


if __name__ == "__main__":
    main()
