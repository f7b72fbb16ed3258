"""What people run: the ``face-anon`` command line."""
