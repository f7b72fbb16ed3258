# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""Training face-anon models: the data, the recipe (what trains, one step's loss) and the trained repository.

`train_face_anon.py` at the repository root is the command line (`accelerate launch train_face_anon.py ...`); this
package holds what it and the tests share. It is not one of the Hub files: a trained repository needs only
`pipeline_face_anon.py` and `modeling_referencenet.py`.
"""
