"""Geometry of a face in a photo: FFHQ alignment, the soft face mask, pasting a crop back."""
