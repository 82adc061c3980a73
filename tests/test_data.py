"""CIFAR-10 loader: standard layout, clear errors, batched augmentation."""
import urllib.request

import pytest
import torch

from training import data as cifar


def test_reads_the_standard_layout(fake_cifar):
    train = cifar.load_split("train", fake_cifar, download=False)
    test = cifar.load_split("test", fake_cifar, download=False)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 30 and test.labels.dtype == torch.int64


def test_real_cifar_has_the_official_sizes(cifar_dir):
    test = cifar.load_split("test", cifar_dir)
    assert test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_missing_data_offline_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(cifar.DataError) as err:
        cifar.load_split("test", tmp_path / "nowhere")
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "BIOFLEXNET_DATA_DIR" in msg and "no route to host" in msg
    assert not (tmp_path / "nowhere" / "cifar-10-batches-py").exists()


def test_corrupt_batch_file_is_reported(fake_cifar):
    (fake_cifar / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(cifar.DataError, match="not a readable CIFAR-10 batch"):
        cifar.load_split("test", fake_cifar, download=False)


def test_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        cifar.load_split("validation")


def test_augment_is_a_crop_and_flip_of_the_padded_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = cifar.augment(images, gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(8):  # every output is one of the 2 * 81 crops of its own padded image
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


def test_eval_batches_cover_the_split_in_order(fake_cifar):
    split = cifar.load_split("test", fake_cifar, download=False)
    labels = torch.cat([y for _, y in cifar.batches(split, 7)])
    assert torch.equal(labels, split.labels)


def test_subset_is_balanced_and_fixed(cifar_dir):
    train = cifar.load_split("train", cifar_dir)
    a, b = cifar.subset(train, 1000, seed=1), cifar.subset(train, 1000, seed=1)
    assert torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [100] * 10
