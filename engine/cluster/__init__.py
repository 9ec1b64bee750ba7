"""Indexing on a cluster (Ray): the job, its shards and their merge into the library."""
