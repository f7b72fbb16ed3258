"""Training tests: `train_face_anon.py` and `face_anon_training` on tiny models built here (CPU, offline)."""
