"""A job's life around the recipe: its run-dir lock, status.json, failure policy and sweep resume."""
