"""Training: data loaders, CIFAR models, distillation losses, supernet training (sandwich rule), fine-tuning."""

from compress.train.supernet import train_supernet

__all__ = ["train_supernet"]
