"""Reading and writing files: images (orientation, pixel modes, metadata, atomic writes) and JPEG surgery."""
