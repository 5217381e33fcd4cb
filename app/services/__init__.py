"""Domain logic. Services add and flush; the view, task or CLI command commits."""
