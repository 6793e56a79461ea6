"""Keras 3 on TensorFlow, as the original TensorFlow batch-size study used it: model.fit and
model.predict on the same network and data. Run inside the optional TensorFlow environment
(`make bench-tf`), once per batch size so that bench/run.py can time it next to the other loops;
prints one JSON object on stdout: {"keras": version, "rates": [images/s of each repeat]}.

    python keras_peer.py DATA.npz train|infer BATCH REPEATS [seed-cnn|keras-cnn]
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


def keras_cnn() -> keras.Model:
    """The Keras MNIST example's network."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2), keras.layers.Dropout(0.25), keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(10),
    ])


MODELS = {"seed-cnn": seed_cnn, "keras-cnn": keras_cnn}


def train_rates(images: np.ndarray, labels: np.ndarray, batch: int, repeats: int, build=seed_cnn) -> list[float]:
    """One shuffled pass over as many images as batchlab's benchmark trains on, per repeat."""
    count = min(len(images), max(4 * batch, 2048))
    model = build()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[:batch * 2], labels[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(images[:count], labels[:count], batch_size=batch, epochs=1, verbose=0, shuffle=True)
        rates.append(count / (time.perf_counter() - start))
    return rates


def infer_rates(images: np.ndarray, batch: int, repeats: int, build=seed_cnn) -> list[float]:
    tiled = images[np.arange(max(batch, 2048)) % len(images)]
    model = build()
    model.predict(tiled[:batch], batch_size=batch, verbose=0)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(tiled, batch_size=batch, verbose=0)
        rates.append(len(tiled) / (time.perf_counter() - start))
    return rates


def main() -> None:
    data_file, mode, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    build = MODELS[sys.argv[5] if len(sys.argv) > 5 else "seed-cnn"]
    data = np.load(data_file)
    images = data["images"].reshape(-1, 28, 28, 1)
    rates = (train_rates(images, data["labels"], batch, repeats, build) if mode == "train"
             else infer_rates(images, batch, repeats, build))
    print(json.dumps({"keras": keras.__version__, "rates": rates}))


if __name__ == "__main__":
    main()
