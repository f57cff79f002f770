"""Network definitions that the model bundles under ``models/`` instantiate."""
