"""KV size and throughput from configs and profiles; the paper's model; t and P/D search."""
