"""Loading model bundles and running them on cines."""
