"""genrl's benchmark suite (not imported by genrl)."""
