"""Course glue: settings, recipe, artifacts and their provenance, and the steps the notebooks share."""
