"""Keras 3 on TensorFlow, as the original TensorFlow batch-size study used it: model.fit and
model.predict on the same network and data. Run inside the optional TensorFlow environment
(`make bench-tf`); prints one JSON object on stdout.

    python keras_peer.py DATA.npz 1,4,16 10000,40000
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


def main() -> None:
    data = np.load(sys.argv[1])
    images = data["images"].reshape(-1, 28, 28, 1)
    labels = data["labels"]
    train_sizes = [int(b) for b in sys.argv[2].split(",")]
    infer_sizes = [int(b) for b in sys.argv[3].split(",")]
    result = {"keras": keras.__version__, "train": {}, "infer": {}}
    for batch in train_sizes:
        count = min(len(images), max(4 * batch, 2048))
        model = seed_cnn()
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(images[:batch * 2], labels[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # warm-up
        start = time.perf_counter()
        model.fit(images[:count], labels[:count], batch_size=batch, epochs=1, verbose=0, shuffle=True)
        result["train"][batch] = count / (time.perf_counter() - start)
    model = seed_cnn()
    for batch in infer_sizes:
        tiled = images[np.arange(max(batch, 2048)) % len(images)]
        model.predict(tiled[:batch], batch_size=batch, verbose=0)  # warm-up
        start = time.perf_counter()
        model.predict(tiled, batch_size=batch, verbose=0)
        result["infer"][batch] = len(tiled) / (time.perf_counter() - start)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
