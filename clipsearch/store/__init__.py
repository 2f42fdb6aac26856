"""Storage of an index folder: the SQLite catalog, the vector index types, on-disk inverted
lists, and the one atomic-write helper that every file write goes through."""
