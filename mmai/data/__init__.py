"""Data: the CUB-200-2011 + caption-release reader, the synthetic generator, the shard writer."""
