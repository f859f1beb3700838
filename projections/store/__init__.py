"""RocksDB storage of projections: column families, key layouts, atomic batches."""
