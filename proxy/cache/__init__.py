"""The local cache: an LMDB index, small objects inside it, larger ones as chunk files."""
