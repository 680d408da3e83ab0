"""End-to-end jobs built from the library: stages, ground truth, results tables."""
