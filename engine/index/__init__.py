"""Indexing: walking folders, decoding photos (RAW included), reading their words, embedding them into the library."""
