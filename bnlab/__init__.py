"""bnlab: check the popular claims about Batch Normalization on CIFAR-10 ResNets."""

__version__ = "0.1.0"
