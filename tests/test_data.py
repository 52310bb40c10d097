"""In-memory image data and batch loaders, on the CIFAR-10 subset shipped with the project."""

import tarfile

import pytest
import torch

from compress.train.data import SHIPPED_CIFAR, TensorLoader, cifar10_loaders, load_image_folder
from compress.errors import InvalidParameterError


@pytest.fixture(scope="module")
def test_split():
    return load_image_folder(SHIPPED_CIFAR, "test")


def test_shipped_subset_is_real_cifar(test_split):
    assert len(test_split) == 2000
    assert test_split.images.shape[1:] == (3, 32, 32) and test_split.images.dtype == torch.uint8
    assert test_split.classes[0] == "airplane" and len(test_split.classes) == 10
    assert torch.bincount(test_split.labels).tolist() == [200] * 10
    mean = test_split.images.float().mean().item()
    assert 100 < mean < 140  # natural images, not noise or blank


def test_loader_shapes_order_and_augmentation(test_split):
    sub = test_split.subset(20)
    loader = TensorLoader(sub, 64, train=True, seed=3)
    assert len(loader) == 3  # 200 images, drop_last
    loader.set_epoch(0)
    a = [y for _, y in loader]
    loader.set_epoch(0)
    b = [y for _, y in loader]
    loader.set_epoch(1)
    c = [y for _, y in loader]
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not all(torch.equal(p, q) for p, q in zip(a, c))
    x, _ = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.5  # normalised
    evalx = TensorLoader(sub, 64, train=False)
    x1 = torch.cat([x for x, _ in evalx])
    x2 = torch.cat([x for x, _ in evalx])
    assert torch.equal(x1, x2) and len(x1) == 200  # fixed order, no augmentation, last batch kept
    first = next(iter(evalx))[1]
    assert len(first.unique()) >= 8  # mixed classes, not sorted by class


def test_ranks_split_the_batches(test_split):
    sub = test_split.subset(20)
    seen = []
    for rank in range(2):
        loader = TensorLoader(sub, 20, train=True, rank=rank, world_size=2)
        assert len(loader) == 5
        seen.append({tuple(y.tolist()) for _, y in loader})
    assert not seen[0] & seen[1]


def test_resume_inside_an_epoch(test_split):
    loader = TensorLoader(test_split.subset(20), 50, train=True)
    full = [y for _, y in loader]
    loader.start_batch = 2
    assert [y.tolist() for _, y in loader] == [y.tolist() for y in full[2:]]


def test_bad_sources(tmp_path):
    with pytest.raises(InvalidParameterError, match="not found"):
        load_image_folder(tmp_path / "nope.tar.gz")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(InvalidParameterError, match="holds no images"):
        load_image_folder(empty, "train")
    with pytest.raises(InvalidParameterError, match="batch_size"):
        cifar10_loaders(batch_size=0)
