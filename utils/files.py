"""File helpers shared by the data, evaluation and packing code."""
import hashlib


def file_sha256(path):
    """The sha256 of a file's contents (hex): what provenance records compare, not names or mtimes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
