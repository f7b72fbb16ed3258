"""Whole-photo tests (the face_anon application package)."""
