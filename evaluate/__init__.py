"""Evaluation: one run from a config (pipeline: extraction, provenance, search and scoring, page, export),
feature extraction to disk (extract, features), faiss search (search), R@K (metrics), the paper's result
table (table), the HTML retrieval page (page) and a trained model's retrieval outside a benchmark
(retrieve). The CLI is evaluation.py."""
