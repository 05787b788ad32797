"""The climb of notebook 07: site-grouped cross-validation, ensembles, test-time augmentation, detector crops."""
