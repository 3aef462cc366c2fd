"""The backends behind the seam (fdbworkers._db): the real FoundationDB binding, the
embedded engine, the dev-server client, wire protocol and server, and open_database."""
