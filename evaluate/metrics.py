"""Retrieval metrics of shared/DATA_FORMAT.md.

R@K of one query = |relevant ∩ top-K| / |relevant|, averaged over queries, in percent, with
|relevant| the size of the query's whole ground-truth list, as in the authors' evaluation code:
a relevant item missing from the gallery cannot be retrieved and so lowers the query's recall.
A query none of whose relevant items is in the gallery, or with no ground truth at all, is left
out of the mean and reported. Hit rate@K, the share of queries with at least one relevant item
in the top K (what several codebases call "recall"), is reported beside it.
"""
import numpy as np


def recall_at_k(query_ids, ranked_rows, gallery_ids, gt, ks):
    """query_ids [Nq]; ranked_rows [Nq, k] gallery rows best first; gallery_ids [Ng]; gt {query id: [gallery ids]}.

    Returns {"recall": {"K": %}, "hit_rate": {"K": %}, "num_evaluated", "left_out": {reason: [query ids]},
    "relevant_absent_from_gallery": number of ground-truth pairs whose gallery item is missing}."""
    ks = sorted(int(k) for k in ks)
    ranked_rows = np.asarray(ranked_rows)
    if ranked_rows.shape[0] != len(query_ids):
        raise ValueError(f"{ranked_rows.shape[0]} ranked lists for {len(query_ids)} queries")
    depth = min(ks[-1], len(gallery_ids))
    if ranked_rows.shape[1] < depth:
        raise ValueError(f"R@{ks[-1]} needs the top {depth} of every query, got the top {ranked_rows.shape[1]}")
    cut = np.array([min(k, depth) for k in ks]) - 1
    row_of = {pid: row for row, pid in enumerate(gallery_ids)}
    recall_sum, hit_sum, evaluated, absent = np.zeros(len(ks)), np.zeros(len(ks)), 0, 0
    left_out = {"no_ground_truth": [], "no_relevant_in_gallery": []}
    for q, qid in enumerate(query_ids):
        if qid not in gt:
            left_out["no_ground_truth"].append(qid)
            continue
        wanted = set(gt[qid])
        relevant = [row_of[g] for g in wanted if g in row_of]
        absent += len(wanted) - len(relevant)
        if not relevant:
            left_out["no_relevant_in_gallery"].append(qid)
            continue
        found = np.cumsum(np.isin(ranked_rows[q, :depth], relevant))[cut]
        recall_sum += found / len(wanted)
        hit_sum += found > 0
        evaluated += 1
    have = set(query_ids)
    left_out["no_query_features"] = [qid for qid in gt if qid not in have]
    if evaluated == 0:
        raise ValueError("no query has a relevant item in the gallery: nothing to evaluate "
                         f"({len(left_out['no_ground_truth'])} queries without ground truth, "
                         f"{len(left_out['no_relevant_in_gallery'])} with all relevant items absent)")
    return {
        "recall": {str(k): 100.0 * s / evaluated for k, s in zip(ks, recall_sum)},
        "hit_rate": {str(k): 100.0 * s / evaluated for k, s in zip(ks, hit_sum)},
        "num_evaluated": evaluated,
        "left_out": left_out,
        "relevant_absent_from_gallery": absent,
    }
