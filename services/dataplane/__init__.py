"""The data plane: mixtures, balanced batches, exact recovery."""
