"""The data: the registry of datasets with checksums and look-up (registry.py), CIFAR archives
(cifar.py), downloads (download.py), folders of images (imagefolder.py), resizing (resize.py), the
Dataset record (dataset.py); device.py puts a dataset on a
device for training (the one module here that imports torch)."""
