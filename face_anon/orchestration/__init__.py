"""Putting the stages together: one photo, and batches of files."""
