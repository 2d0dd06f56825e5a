import struct

import numpy as np
import pytest

from bessemer.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    bin_path,
    idx_path,
    merge,
)
from bessemer.errors import DataError

DOCS = [[1, 2, 3], [], [65000, 7], list(range(100))]


def read_idx_by_hand(path):
    """Parse an .idx with struct, following the published Megatron layout."""
    raw = path.read_bytes()
    magic, version, code, n_seq, n_doc = struct.unpack_from("<9sQBQQ", raw, 0)
    off = struct.calcsize("<9sQBQQ")
    lengths = struct.unpack_from(f"<{n_seq}i", raw, off)
    off += 4 * n_seq
    pointers = struct.unpack_from(f"<{n_seq}q", raw, off)
    off += 8 * n_seq
    docs = struct.unpack_from(f"<{n_doc}q", raw, off)
    assert off + 8 * n_doc == len(raw)
    return magic, version, code, list(lengths), list(pointers), list(docs)


def test_layout_by_hand(tmp_path):
    with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
        for d in DOCS:
            w.add_document(d)
    magic, version, code, lengths, pointers, docs = read_idx_by_hand(idx_path(tmp_path / "d"))
    assert magic == b"MMIDIDX\x00\x00" and version == 1 and code == 8  # uint16
    assert lengths == [3, 0, 2, 100]
    assert pointers == [0, 6, 6, 10]  # byte offsets
    assert docs == [0, 1, 2, 3, 4]
    raw = bin_path(tmp_path / "d").read_bytes()
    assert list(struct.unpack(f"<{len(raw) // 2}H", raw)) == [t for d in DOCS for t in d]


def test_int32_code_and_reader_from_hand_written_files(tmp_path):
    # write the files with struct only; our reader must accept them
    docs = [[5, 100000], [70000]]
    flat = [t for d in docs for t in d]
    (tmp_path / "h.bin").write_bytes(struct.pack(f"<{len(flat)}i", *flat))
    head = struct.pack("<9sQBQQ", b"MMIDIDX\x00\x00", 1, 4, 2, 3)
    body = struct.pack("<2i", 2, 1) + struct.pack("<2q", 0, 8) + struct.pack("<3q", 0, 1, 2)
    (tmp_path / "h.idx").write_bytes(head + body)
    ds = IndexedDataset(tmp_path / "h")
    assert ds.dtype == np.int32 and len(ds) == 2
    assert ds[0].tolist() == [5, 100000] and ds[1].tolist() == [70000]
    assert ds.get(0, offset=1, length=5).tolist() == [100000]
    assert ds.document_indices.tolist() == [0, 1, 2]


def test_round_trip_and_get(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, rng.integers(0, 50)) for _ in range(200)]
    with IndexedDatasetWriter(tmp_path / "r", best_dtype(60000)) as w:
        w.add_document(docs[0])
        w.add_documents(np.concatenate(docs[1:]), [len(d) for d in docs[1:]])
    ds = IndexedDataset(tmp_path / "r")
    assert len(ds) == 200 and ds.num_tokens == sum(len(d) for d in docs)
    assert all(np.array_equal(ds[i], d) for i, d in enumerate(docs))
    assert np.array_equal(ds[-1], docs[-1])
    long = max(range(200), key=lambda i: len(docs[i]))
    assert np.array_equal(ds.get(long, 3, 4), docs[long][3:7])
    assert ds.sequence_lengths.tolist() == [len(d) for d in docs]
    with pytest.raises(IndexError):
        ds[200]


def test_best_dtype():
    assert best_dtype(32000) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32
    assert best_dtype(125696) == np.int32


def test_merge(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with IndexedDatasetWriter(a, np.uint16) as w:
        w.add_document([1, 2])
    with IndexedDatasetWriter(b, np.uint16) as w:
        w.add_document([3])
        w.add_document([4, 5, 6])
    merge([a, b, a], tmp_path / "m")
    m = IndexedDataset(tmp_path / "m")
    assert [m[i].tolist() for i in range(len(m))] == [[1, 2], [3], [4, 5, 6], [1, 2]]
    assert m.sequence_pointers.tolist() == [0, 4, 6, 12]
    with IndexedDatasetWriter(tmp_path / "i", np.int32) as w:
        w.add_document([1])
    with pytest.raises(DataError, match=r"i: dtype int32 differs from uint16"):
        merge([a, tmp_path / "i"], tmp_path / "bad")


def test_atomic_writes(tmp_path):
    with pytest.raises(RuntimeError), IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
        w.add_document([1, 2, 3])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    w = IndexedDatasetWriter(tmp_path / "y", np.uint16)
    w.add_document([1])
    assert not bin_path(tmp_path / "y").exists()  # only a temporary name until finalize
    w.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.bin", "y.idx"]


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.bin: not found; run `bessemer prepare --out .*nothing`"):
        IndexedDataset(tmp_path / "nothing")
    (tmp_path / "bad.bin").write_bytes(b"")
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" * 8)
    with pytest.raises(DataError, match=r"bad\.idx: not a Megatron index"):
        IndexedDataset(tmp_path / "bad")
    with IndexedDatasetWriter(tmp_path / "t", np.uint16) as w:
        w.add_document([1, 2, 3])
    bin_path(tmp_path / "t").write_bytes(b"\x01\x00")
    with pytest.raises(DataError, match=r"t\.bin: shorter than its index"):
        IndexedDataset(tmp_path / "t")


@pytest.mark.slow
def test_megatron_core_reads_our_files(tmp_path):
    """Cross-read with Megatron-LM's own reader when megatron-core is installed (pip install megatron-core)."""
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronDataset
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    with IndexedDatasetWriter(tmp_path / "ours", np.uint16) as w:
        for d in DOCS:
            w.add_document(d)
    theirs = MegatronDataset(str(tmp_path / "ours"))
    assert len(theirs) == len(DOCS)
    assert [theirs[i].tolist() for i in range(len(DOCS))] == DOCS
    assert theirs.document_indices.tolist() == [0, 1, 2, 3, 4]
    # and we read what Megatron's builder writes
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.int32)
    for d in DOCS:
        builder.add_item(torch.tensor(d, dtype=torch.int32))
        builder.end_document()
    builder.finalize(str(tmp_path / "m.idx"))
    ours = IndexedDataset(tmp_path / "m")
    assert ours.dtype == np.int32
    assert [ours[i].tolist() for i in range(len(DOCS))] == DOCS
