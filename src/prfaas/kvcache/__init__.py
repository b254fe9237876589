"""Block bookkeeping (ints, not tensors): block hashes, block pool, prefix cache, KV sizes."""
