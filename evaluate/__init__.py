"""Evaluation: feature extraction to disk (extract, features), faiss search (search), R@K (metrics),
the paper's result table (table) and the HTML retrieval page (page). The CLI is evaluation.py."""
