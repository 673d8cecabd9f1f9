"""R@K and hit rate on hand-built features whose every value is worked out by hand."""
import json
import re

import numpy as np
import pytest

import evaluation
from evaluate.features import save_features
from evaluate.metrics import PAPER_KS, SEARCH_KS, recall_at_k, search_ks

DIM = 8


def unit(**axes):
    v = np.zeros(DIM, dtype=np.float32)
    for axis, value in axes.items():
        v[int(axis[1:])] = value
    return v


# Gallery: score against query axis c is the e_c coefficient (e7 is a noise axis nobody queries).
GALLERY = {
    100: unit(e0=1.0),             # A 1.0
    101: unit(e0=0.8, e7=0.6),     # A 0.8
    102: unit(e0=0.8, e7=0.6),     # A 0.8, tied with 101 (101 ranks first: lower gallery row)
    103: unit(e0=0.6, e7=0.8),     # A 0.6
    104: unit(e1=1.0),             # B 1.0
    105: unit(e1=0.6, e7=0.8),     # B 0.6
    106: unit(e1=-0.6, e7=0.8),    # B -0.6: last for B, outside its top 5
    107: unit(e2=1.0),             # C 1.0
    108: unit(e7=1.0),
}
QUERIES = {1: unit(e0=1.0), 2: unit(e1=1.0), 3: unit(e2=1.0), 4: unit(e3=1.0)}
# Query 1 (A): relevant 102 (rank 3, after its tie) and 103 (rank 4); 999 is not in the gallery.
# Query 2 (B): relevant 104 (rank 1) and 106 (last). Query 3 (C): 107 at rank 1, written as paths.
# Query 4: its only relevant item is absent -> scores 0 and counts. Query 6: gt but not in the query list.
GT_LINES = [
    "1\t102,103,999",
    "2\t106,104",
    "videos/frames/3_00001.jpg\tgoods/images/7/107.jpg",
    "4\t555",
    "6\t100",
]
KS = [1, 2, 3, 5]
# Per-query recall at K=1,2,3,5 (|relevant| counts 999 too, as the authors' code does):
# A 0,0,1/3,2/3  B 1/2,1/2,1/2,1/2  C 1,1,1,1  D 0,0,0,0 -> mean over all 4 queries of the list.
EXPECTED_RECALL = {"1": 37.5, "2": 37.5, "3": 1100 / 24, "5": 1300 / 24}
EXPECTED_HIT = {"1": 50.0, "2": 50.0, "3": 75.0, "5": 75.0}


def test_recall_on_hand_built_features(tmp_path):
    for name, items in (("q", QUERIES), ("g", GALLERY)):
        save_features(str(tmp_path / f"{name}.npy"), str(tmp_path / f"{name}.txt"),
                      np.stack(list(items.values())), list(items), "float16")
    (tmp_path / "gt.txt").write_text("\n".join(GT_LINES) + "\n", encoding="utf-8")
    out = tmp_path / "res" / "results.json"
    evaluation.main(["search", "--query-feats", str(tmp_path / "q.npy"), "--query-ids", str(tmp_path / "q.txt"),
                     "--gallery-feats", str(tmp_path / "g.npy"), "--gallery-ids", str(tmp_path / "g.txt"),
                     "--gt", str(tmp_path / "gt.txt"), "--out", str(out), "--topk", "5",
                     "--direction", "video2goods", "--feature", "fused"])
    res = json.loads(out.read_text())
    # --topk 5 reports R@1 and R@5 (10, 20, 50, 100 are above it); the K=2,3 values come from recall_at_k below
    assert list(res["recall"]) == ["1", "5"]
    assert res["recall"] == pytest.approx({k: EXPECTED_RECALL[k] for k in ("1", "5")})
    assert res["hit_rate"] == pytest.approx({k: EXPECTED_HIT[k] for k in ("1", "5")})
    assert res["num_queries"] == 4 and res["num_gallery"] == 9
    assert res["no_relevant_in_gallery"] == [4] and res["gt_queries_not_in_list"] == [6]
    assert res["relevant_absent_from_gallery"] == 2  # 999 and 555
    ranking = np.load(out.parent / "ranking.npz")
    assert ranking["gallery_ids"][0, :4].tolist() == [100, 101, 102, 103]
    assert ranking["scores"][1, :2] == pytest.approx([1.0, 0.6], abs=1e-3)

    gallery_ids = ranking["gallery_ids"]
    row_of = {pid: r for r, pid in enumerate(GALLERY)}
    rows = np.vectorize(row_of.get)(gallery_ids)
    from datasets.annotations import parse_gt
    metrics = recall_at_k(ranking["query_ids"].tolist(), rows, list(GALLERY), parse_gt(str(tmp_path / "gt.txt")), KS)
    assert metrics["recall"] == pytest.approx(EXPECTED_RECALL)
    assert metrics["hit_rate"] == pytest.approx(EXPECTED_HIT)


def test_the_default_search_scores_every_k_of_search_ks(tmp_path):
    for name, items in (("q", QUERIES), ("g", GALLERY)):
        save_features(str(tmp_path / f"{name}.npy"), str(tmp_path / f"{name}.txt"),
                      np.stack(list(items.values())), list(items), "float32")
    (tmp_path / "gt.txt").write_text("\n".join(GT_LINES) + "\n", encoding="utf-8")
    out = tmp_path / "results.json"
    evaluation.main(["search", "--query-feats", str(tmp_path / "q.npy"), "--query-ids", str(tmp_path / "q.txt"),
                     "--gallery-feats", str(tmp_path / "g.npy"), "--gallery-ids", str(tmp_path / "g.txt"),
                     "--gt", str(tmp_path / "gt.txt"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert list(res["recall"]) == ["1", "5", "10", "20", "50", "100"]
    # K >= 9 is the whole gallery of 9: A 2/3 (999 is absent), B 1, C 1, D 0
    whole = 100 * (2 / 3 + 1 + 1 + 0) / 4
    assert res["recall"] == pytest.approx({"1": EXPECTED_RECALL["1"], "5": EXPECTED_RECALL["5"],
                                           **{k: whole for k in ("10", "20", "50", "100")}})
    assert res["hit_rate"]["1"] == pytest.approx(EXPECTED_HIT["1"]) and res["hit_rate"]["100"] == 75.0


def test_recall_at_1_and_5_on_hand_ranked_lists():
    """|relevant ∩ top-K| / |relevant| per query (the authors' 4-analysis.py), worked out by hand at K = 1 and 5."""
    gallery = list(range(10, 18))
    ranked = np.array([[3, 0, 5, 1, 6, 2, 4, 7],   # ids 13 10 15 11 16 12 14 17
                       [0, 1, 2, 3, 4, 5, 6, 7],   # ids 10 11 12 13 14 15 16 17
                       [7, 6, 5, 4, 3, 2, 1, 0]])  # ids 17 16 15 14 13 12 11 10
    gt = {7: [13, 16, 12],        # ranks 1, 5, 6: R@1 1/3, R@5 2/3
          8: [11, 14, 99, 98],    # ranks 2, 5, two absent from the gallery: R@1 0, R@5 2/4
          9: [10]}                # rank 8: R@1 0, R@5 0, found at K >= 8
    m = recall_at_k([7, 8, 9], ranked, gallery, gt, SEARCH_KS)
    whole = 100 * (1 + 2 / 4 + 1) / 3  # every K from 10 up reads the whole gallery of 8
    assert m["recall"] == pytest.approx({"1": 100 / 9, "5": 100 * (2 / 3 + 1 / 2) / 3,
                                         **{str(k): whole for k in PAPER_KS}})
    assert m["hit_rate"] == pytest.approx({"1": 100 / 3, "5": 200 / 3, **{str(k): 100.0 for k in PAPER_KS}})
    assert m["relevant_absent_from_gallery"] == 2


def test_recall_at_every_searched_k_equals_a_per_query_count_of_the_top_k():
    """The authors' 4-analysis.py per query: (ground-truth ids among the first K ranked) / (ground-truth ids),
    averaged over the queries; here on random rankings, at every K of SEARCH_KS, the gallery shorter than some."""
    rng = np.random.default_rng(0)
    gallery = [int(i) for i in rng.choice(10**6, 60, replace=False)]
    queries = list(range(40))
    gt = {q: [gallery[i] for i in rng.choice(60, rng.integers(1, 6), replace=False)] + [10**7 + q] * (q % 3 == 0)
          for q in queries}  # every third query has one relevant item outside the gallery
    ranked = np.stack([rng.permutation(60) for _ in queries])
    m = recall_at_k(queries, ranked, gallery, gt, SEARCH_KS)
    for k in SEARCH_KS:
        per_query = [sum(gallery[r] in gt[q] for r in ranked[q][:k]) / len(gt[q]) for q in queries]
        assert m["recall"][str(k)] == pytest.approx(100 * sum(per_query) / len(queries))


def test_search_ks_holds_the_papers_columns_and_reads_eval_topk():
    assert set(PAPER_KS) <= set(SEARCH_KS) and {1, 5} <= set(SEARCH_KS)  # a default search fills the table
    assert search_ks(None) == SEARCH_KS
    assert search_ks([100, 1, 10, 10]) == (1, 10, 100)


def test_recall_counts_each_relevant_item_once_and_caps_k_at_the_gallery():
    # gallery of 3, K up to 10: every list is the whole gallery
    ranked = np.array([[2, 0, 1], [1, 2, 0]])
    gt = {7: [30, 30, 10], 8: [20]}  # a repeated id is one relevant item
    m = recall_at_k([7, 8], ranked, [10, 20, 30], gt, [1, 2, 10])
    assert m["recall"] == pytest.approx({"1": 75.0, "2": 100.0, "10": 100.0})
    assert m["hit_rate"] == pytest.approx({"1": 100.0, "2": 100.0, "10": 100.0})


def test_query_without_relevant_item_in_gallery_scores_zero_and_stays_in_the_mean():
    ranked = np.array([[0, 1], [1, 0]])
    alone = recall_at_k([7], ranked[:1], [10, 20], {7: [10]}, [1])
    both = recall_at_k([7, 8], ranked, [10, 20], {7: [10], 8: [99]}, [1])
    assert alone["recall"]["1"] == 100.0
    assert both["recall"]["1"] == 50.0 and both["hit_rate"]["1"] == 50.0  # (1 + 0) / 2
    assert both["num_queries"] == 2 and both["no_relevant_in_gallery"] == [8]


def test_query_without_ground_truth_line_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"gt\.txt: no ground-truth line for 1 of the 2 queries .*\[8\]"):
        recall_at_k([7, 8], np.array([[0], [0]]), [10], {7: [10]}, [1], gt_source="data/test_file/gt.txt")
    for name, items in (("q", {7: unit(e0=1.0), 8: unit(e1=1.0)}), ("g", {10: unit(e0=1.0)})):
        save_features(str(tmp_path / f"{name}.npy"), str(tmp_path / f"{name}.txt"),
                      np.stack(list(items.values())), list(items), "float32")
    (tmp_path / "gt.txt").write_text("7\t10\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "gt.txt"))):
        evaluation.main(["search", "--query-feats", str(tmp_path / "q.npy"), "--query-ids", str(tmp_path / "q.txt"),
                         "--gallery-feats", str(tmp_path / "g.npy"), "--gallery-ids", str(tmp_path / "g.txt"),
                         "--gt", str(tmp_path / "gt.txt"), "--out", str(tmp_path / "r.json"), "--topk", "1"])


def test_recall_errors():
    with pytest.raises(ValueError, match="top 3"):
        recall_at_k([7], np.array([[0, 1]]), [10, 20, 30, 40], {7: [10]}, [3])
    with pytest.raises(ValueError, match="no query has a relevant item in the gallery"):
        recall_at_k([7], np.array([[0]]), [10], {7: [99]}, [1])
    with pytest.raises(ValueError, match="empty query list"):
        recall_at_k([], np.zeros((0, 1), dtype=int), [10], {7: [10]}, [1])
