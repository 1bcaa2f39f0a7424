import numpy as np
import pytest
from PIL import Image

from helpers.paths import CALIB, EVAL
from edgekit.datasets import InputSpec, load_dataset
from edgekit.errors import DataError

DIGITS_INPUT = [InputSpec("input", "float32", (None, 1, 8, 8))]


def test_bundled_splits_are_disjoint_and_labelled():
    calib, ev = load_dataset(CALIB), load_dataset(EVAL)
    assert len(calib) > 1000 and len(ev) > 700
    assert calib.has_labels and ev.has_labels
    a = {bytes(np.asarray(x)) for x in calib.arrays["input"]}
    b = {bytes(np.asarray(x)) for x in ev.arrays["input"]}
    assert len(a & b) < 5  # the digits set has a few identical images; the splits are by index


def test_npz_is_memory_mapped_and_streams_in_batches():
    ds = load_dataset(EVAL)
    assert isinstance(ds.arrays["input"], np.memmap)
    sizes = [len(labels) for _, labels in ds.batches(100)]
    assert sum(sizes) == len(ds) and max(sizes) == 100
    with np.load(EVAL) as ref:
        first, labels = next(ds.batches(7))
        assert np.array_equal(first["input"], ref["input"][:7]) and np.array_equal(labels, ref["labels"][:7])


def test_content_hash_is_stable_and_content_based(tmp_path):
    x = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "a.npz", input=x)
    np.savez(tmp_path / "b.npz", input=x)
    np.savez(tmp_path / "c.npz", input=x + 1)
    h = [load_dataset(tmp_path / f"{n}.npz").sha256 for n in "abc"]
    assert h[0] == h[1] != h[2]


def test_compressed_npz_still_loads(tmp_path):
    x = np.ones((4, 1, 8, 8), np.float32)
    np.savez_compressed(tmp_path / "z.npz", input=x, labels=np.arange(4))
    ds = load_dataset(tmp_path / "z.npz")
    ds.check(DIGITS_INPUT)
    assert len(ds) == 4


def test_npy_directory(tmp_path):
    ids = np.random.default_rng(1).integers(0, 100, (6, 16), dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", np.ones_like(ids))
    (tmp_path / "dataset.toml").write_text('format = "npy"\n[arrays]\ninput_ids = "ids.npy"\nattention_mask = "mask.npy"\n')
    ds = load_dataset(tmp_path)
    assert sorted(ds.input_names) == ["attention_mask", "input_ids"] and not ds.has_labels
    ds.check([InputSpec("input_ids", "int64", (None, 16)), InputSpec("attention_mask", "int64", (None, 16))])
    batch, labels = next(ds.batches(4))
    assert labels is None and np.array_equal(batch["input_ids"], ids[:4])


def test_image_folder(tmp_path):
    for cls, value in (("zero", 0), ("one", 255)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("L", (16, 16), color=value).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dataset.toml").write_text(
        'format = "images"\n[images]\ninput = "input"\nsize = [8, 8]\nmode = "L"\nmean = [0.5]\nstd = [0.5]\n')
    ds = load_dataset(tmp_path)
    assert len(ds) == 6 and ds.has_labels
    ds.check(DIGITS_INPUT)
    batch, labels = next(ds.batches(6))
    assert batch["input"].shape == (6, 1, 8, 8)
    # sorted class folders: "one" is class 0 (white, +1 after normalisation), "zero" class 1 (-1)
    assert np.allclose(batch["input"][labels == 0], 1.0) and np.allclose(batch["input"][labels == 1], -1.0)


@pytest.mark.parametrize("arrays, needle", [
    ({"other": np.zeros((3, 1, 8, 8), np.float32)}, "lacks input 'input'"),
    ({"input": np.zeros((3, 8, 8), np.float32)}, "shape"),
    ({"input": np.zeros((3, 1, 8, 9), np.float32)}, "axis 3"),
    ({"input": np.zeros((3, 1, 8, 8), np.int32)}, "dtype"),
    ({"input": np.full((3, 1, 8, 8), np.nan, np.float32)}, "NaN"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "empty"),
    ({"input": np.zeros((3, 1, 8, 8), np.float32), "labels": np.zeros(2, np.int64)}, "axis 0"),
    # a column of labels failed only in the evaluation: "labels have shape (64, 1), the model's predictions (64,)"
    ({"input": np.zeros((3, 1, 8, 8), np.float32), "labels": np.zeros((3, 1), np.int64)},
     "must hold one class id per sample"),
])
def test_bad_data_is_named(tmp_path, arrays, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=needle.replace("(", r"\(")) as err:
        load_dataset(tmp_path / "bad.npz").check(DIGITS_INPUT)
    assert "bad.npz" in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")
    (tmp_path / "iris.csv").write_text("sepal_length,label\n5.1,0\n")  # said "not a readable .npz file"
    with pytest.raises(DataError, match=r"iris.csv: edgekit does not read .csv files: give a .npz file"):
        load_dataset(tmp_path / "iris.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="dataset.toml"):
        load_dataset(tmp_path / "d")
    (tmp_path / "d" / "dataset.toml").write_text('format = "csv"\n')
    with pytest.raises(DataError, match="format"):
        load_dataset(tmp_path / "d")


def test_a_misspelled_key_is_named_beside_the_missing_one(tmp_path):
    """`kind = "text"` for `format = "text"`: the line names both, not "and 1 more"."""
    (tmp_path / "a.txt").write_text("Some text to read.\n")
    (tmp_path / "dataset.toml").write_text('kind = "text"\nfiles = ["a.txt"]\n')
    with pytest.raises(DataError) as caught:
        load_dataset(tmp_path)
    assert "field 'format': required key is missing, and 'kind' is no key here" in str(caught.value)
    assert "more" not in str(caught.value)


def test_a_set_is_scanned_once_per_model_signature(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", input=np.zeros((5, 1, 8, 8), np.float32))
    ds = load_dataset(tmp_path / "d.npz")
    scans = []
    real = ds.batches
    monkeypatch.setattr(ds, "batches", lambda *a, **k: (scans.append(1), real(*a, **k))[1])
    ds.check(DIGITS_INPUT)
    ds.check(DIGITS_INPUT, role="calibration data")
    assert len(scans) == 1
    with pytest.raises(DataError):  # another signature is checked afresh
        ds.check([InputSpec("input", "float32", (None, 1, 8, 9))])


def test_the_label_span_comes_from_the_same_scan(tmp_path, monkeypatch):
    labels = np.array([3, 0, 7, 2, 12])
    np.savez(tmp_path / "d.npz", input=np.zeros((5, 1, 8, 8), np.float32), labels=labels)
    ds = load_dataset(tmp_path / "d.npz")
    scans = []
    real = ds.batches
    monkeypatch.setattr(ds, "batches", lambda *a, **k: (scans.append(1), real(*a, **k))[1])
    ds.check(DIGITS_INPUT)
    assert ds.label_span == (0, 12) and len(scans) == 1
    ds.check_labels(13, "m.onnx outputs 13 classes")
    with pytest.raises(DataError, match=r"d.npz: labels span 0..12 but m.onnx outputs 10 classes; "
                                        r"labels must be class indices 0..9") as err:
        ds.check_labels(10, "m.onnx outputs 10 classes")
    assert err.value.hint == "labels must be class indices 0..9"
    assert len(scans) == 1


def test_label_span_without_a_check_and_without_labels(tmp_path):
    np.savez(tmp_path / "d.npz", input=np.zeros((3, 1, 8, 8), np.float32), labels=np.array([-2, 1, 0]))
    assert load_dataset(tmp_path / "d.npz").label_span == (-2, 1)
    np.savez(tmp_path / "n.npz", input=np.zeros((3, 1, 8, 8), np.float32))
    unlabelled = load_dataset(tmp_path / "n.npz")
    assert unlabelled.label_span is None
    unlabelled.check_labels(1, "any model")  # nothing to check


def test_an_image_folders_labels_are_its_class_indices(tmp_path):
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / cls / "0.png")
    (tmp_path / "dataset.toml").write_text('format = "images"\n[images]\ninput = "input"\nsize = [8, 8]\nmode = "L"\n')
    ds = load_dataset(tmp_path)
    assert ds.label_span == (0, 2)
    with pytest.raises(DataError, match="labels span 0..2"):
        ds.check_labels(2, "a two-class model")


def test_a_subset_is_judged_by_the_whole_files_labels(tmp_path):
    from edgekit.eval_subset import subset

    np.savez(tmp_path / "d.npz", input=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0, 1, 2, 30]))
    part = subset(load_dataset(tmp_path / "d.npz"), np.array([0, 1]))
    assert part.label_span == (0, 30)
