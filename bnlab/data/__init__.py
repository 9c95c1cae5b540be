"""bnlab's data layer: dataset sources, class-balanced subsets and an on-device batch loader.

Sources (one module each): ``cifar10_jpeg`` (bundled, default), ``cifar10``
(official pickles), ``fashion_mnist`` (idx files).
"""

from bnlab.data.dataset import Dataset, balanced_subset
from bnlab.data.load import load_dataset
from bnlab.data.loader import DeviceLoader

__all__ = ["Dataset", "DeviceLoader", "balanced_subset", "load_dataset"]
