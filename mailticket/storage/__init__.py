"""The storage edge: database engine and migrations, tables, blobs on disk."""
