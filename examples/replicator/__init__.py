"""A replication job runner on fdbworkers (see README.md)."""
