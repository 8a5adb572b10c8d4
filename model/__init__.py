"""cmkp's PyTorch package: reads the pipeline's HDF5 shards (docs/FORMAT.md), trains and evaluates models."""
