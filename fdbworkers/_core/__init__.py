"""The pure core: key layout and codecs, the tuple codec, ring, liveness and settle
arithmetic, membership, assignment and insight. No I/O, no trio, no fdb (a test checks)."""
