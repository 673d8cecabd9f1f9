"""Retrieval metrics of docs/DATA_FORMAT.md, as the authors' evaluation computes them.

R@K of one query = |relevant ∩ top-K| / |relevant|, in percent, with |relevant| the size of
the query's whole ground-truth list: a relevant item missing from the gallery cannot be
retrieved and so lowers the query's recall, and a query none of whose relevant items is in the
gallery scores 0. Every query of the query list counts in the mean; one without a ground-truth
line is an error. Hit rate@K, the share of queries with at least one relevant item in the top
K (what several codebases call "recall"), is reported beside it.
"""
import numpy as np

# the K of R@K an evaluation searches and scores by default (eval.topk: null): the paper's columns and the
# R@1 and R@5 that other cross-domain retrieval work reports
SEARCH_KS = (1, 5, 10, 20, 50, 100)
# the K of the paper's Table 2 columns, the table's default
PAPER_KS = (10, 20, 50, 100)


def search_ks(topk=None):
    """The K scored for eval.topk (None: SEARCH_KS), ascending, each once."""
    return SEARCH_KS if topk is None else tuple(sorted(set(int(k) for k in topk)))


def recall_at_k(query_ids, ranked_rows, gallery_ids, gt, ks, gt_source="the ground truth"):
    """query_ids [Nq]; ranked_rows [Nq, k] gallery rows best first; gallery_ids [Ng]; gt {query id: [gallery ids]}.

    Returns {"recall": {"K": %}, "hit_rate": {"K": %}, "num_queries", "no_relevant_in_gallery": [query ids
    scored 0 because none of their relevant items is in the gallery], "relevant_absent_from_gallery": number
    of ground-truth pairs whose gallery item is missing, "gt_queries_not_in_list": [ids with ground truth
    but not in the query list]}. `gt_source` (e.g. the gt file's path) names the ground truth in errors."""
    ks = sorted(int(k) for k in ks)
    ranked_rows = np.asarray(ranked_rows)
    if len(query_ids) == 0:
        raise ValueError("empty query list: nothing to evaluate")
    if ranked_rows.shape[0] != len(query_ids):
        raise ValueError(f"{ranked_rows.shape[0]} ranked lists for {len(query_ids)} queries")
    depth = min(ks[-1], len(gallery_ids))
    if ranked_rows.shape[1] < depth:
        raise ValueError(f"R@{ks[-1]} needs the top {depth} of every query, got the top {ranked_rows.shape[1]}")
    without_gt = [qid for qid in query_ids if qid not in gt]
    if without_gt:
        raise ValueError(f"{gt_source}: no ground-truth line for {len(without_gt)} of the {len(query_ids)} queries "
                         f"of the query list (first: {without_gt[:5]}); every query needs one")
    cut = np.array([min(k, depth) for k in ks]) - 1
    row_of = {pid: row for row, pid in enumerate(gallery_ids)}
    recall_sum, hit_sum, absent = np.zeros(len(ks)), np.zeros(len(ks)), 0
    no_relevant = []
    for q, qid in enumerate(query_ids):
        wanted = set(gt[qid])
        relevant = [row_of[g] for g in wanted if g in row_of]
        absent += len(wanted) - len(relevant)
        if not relevant:
            no_relevant.append(qid)  # scores 0 at every K
            continue
        found = np.cumsum(np.isin(ranked_rows[q, :depth], relevant))[cut]
        recall_sum += found / len(wanted)
        hit_sum += found > 0
    if len(no_relevant) == len(query_ids):
        raise ValueError(f"no query has a relevant item in the gallery (checked against {gt_source}): "
                         "is the gallery list the one of this direction?")
    n = len(query_ids)
    have = set(query_ids)
    return {
        "recall": {str(k): 100.0 * s / n for k, s in zip(ks, recall_sum)},
        "hit_rate": {str(k): 100.0 * s / n for k, s in zip(ks, hit_sum)},
        "num_queries": n,
        "no_relevant_in_gallery": no_relevant,
        "relevant_absent_from_gallery": absent,
        "gt_queries_not_in_list": [qid for qid in gt if qid not in have],
    }
