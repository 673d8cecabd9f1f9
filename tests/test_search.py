"""faiss search against brute-force numpy, and the feature file formats it reads."""
import numpy as np
import pytest

from evaluate.features import load_features, save_features, write_text_features
from evaluate.search import search


def _random_unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_equals_brute_force_top_k():
    rng = np.random.default_rng(0)
    query, gallery = _random_unit(rng, 40, 32), _random_unit(rng, 3000, 32)
    query_scaled = query * rng.uniform(0.5, 2.0, (40, 1)).astype(np.float32)  # cosine: the norm must not matter
    scores, rows = search(query_scaled, gallery, 100, batch_size=16)
    sims = query.astype(np.float64) @ gallery.astype(np.float64).T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :100]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), atol=1e-5)


def test_k_larger_than_gallery_returns_the_whole_gallery():
    rng = np.random.default_rng(1)
    scores, rows = search(_random_unit(rng, 3, 8), _random_unit(rng, 5, 8), 100)
    assert rows.shape == (3, 5)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dimensions"):
        search(np.ones((2, 4)), np.ones((3, 5)), 2)


def test_binary_and_text_formats_hold_the_same_features(tmp_path):
    rng = np.random.default_rng(2)
    feats, ids = _random_unit(rng, 6, 16), [5, 3, 40, 7, 1, 99]
    save_features(str(tmp_path / "f.npy"), str(tmp_path / "f.txt"), feats, ids, "float32")
    write_text_features(str(tmp_path / "f.feat"), feats, ids)
    a, ida = load_features(str(tmp_path / "f.npy"), str(tmp_path / "f.txt"))
    b, idb = load_features(str(tmp_path / "f.feat"))
    assert ida == idb == ids
    np.testing.assert_array_equal(a, feats)
    np.testing.assert_allclose(b, feats, rtol=1e-6)
    save_features(str(tmp_path / "h.npy"), str(tmp_path / "h.txt"), feats, ids, "float16")
    assert np.load(tmp_path / "h.npy").dtype == np.float16


def test_bad_feature_files_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.feat"
    bad.write_text("1\t0.1,0.2\n2\t0.1,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.feat:2: expected comma-separated floats"):
        load_features(str(bad))
    bad.write_text("1\t0.1,0.2\n2\t0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.feat:2: expected 2 values"):
        load_features(str(bad))
    save_features(str(tmp_path / "d.npy"), str(tmp_path / "d.txt"), np.ones((2, 3)), [4, 4])
    with pytest.raises(ValueError, match="item id 4 appears twice"):
        load_features(str(tmp_path / "d.npy"), str(tmp_path / "d.txt"))
    (tmp_path / "short.txt").write_text("4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="one row per id"):
        load_features(str(tmp_path / "d.npy"), str(tmp_path / "short.txt"))


@pytest.mark.parametrize("block_rows", [1, 7, 64, 10_000])
def test_blocked_search_equals_the_search_of_the_whole_gallery(block_rows):
    from evaluate.search import search_blocks

    rng = np.random.default_rng(3)
    query, gallery = _random_unit(rng, 25, 16), _random_unit(rng, 300, 16)
    for k in (1, 10, 100, 500):
        expected = search(query, gallery, k)
        got = search_blocks(query, gallery, k, block_rows=block_rows)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_blocked_search_reads_a_memory_mapped_float16_gallery(tmp_path):
    from evaluate.search import search_gallery

    rng = np.random.default_rng(4)
    query, gallery = _random_unit(rng, 10, 16), _random_unit(rng, 500, 16)
    save_features(str(tmp_path / "g.npy"), str(tmp_path / "g.txt"), gallery, list(range(500)), "float16")
    mapped, _ = load_features(str(tmp_path / "g.npy"), str(tmp_path / "g.txt"), mmap=True)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16
    got = search_gallery(query, mapped, 20, block_rows=128)
    expected = search(query, np.load(tmp_path / "g.npy").astype(np.float32), 20)
    np.testing.assert_array_equal(got[1], expected[1])


def test_ivfpq_finds_the_planted_neighbours_and_marks_missing_ones():
    from evaluate.search import search_gallery

    rng = np.random.default_rng(5)
    gallery = _random_unit(rng, 4000, 32)
    planted = rng.choice(4000, 50, replace=False)
    query = gallery[planted] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    options = {"nlist": 16, "m": 8, "nprobe": 16, "train_rows": 2000}
    scores, rows = search_gallery(query, gallery, 10, index="ivf_pq", block_rows=1000, ivf_pq=options)
    assert np.mean([p in r for p, r in zip(planted, rows)]) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    # one probed list of a 16-way split holds fewer than 1000 items: the rest of each row is -1, score -inf
    scores, rows = search_gallery(query, gallery, 1000, index="ivf_pq", ivf_pq=dict(options, nprobe=1))
    assert (rows == -1).any() and np.all(np.isneginf(scores[rows == -1]))
    with pytest.raises(ValueError, match="m=5 must divide the feature dimension 32"):
        search_gallery(query, gallery, 10, index="ivf_pq", ivf_pq=dict(options, m=5))
