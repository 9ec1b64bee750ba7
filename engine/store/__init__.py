"""The library's storage: the SQLite truth (photos, vectors, captions, the words read in photos)."""
