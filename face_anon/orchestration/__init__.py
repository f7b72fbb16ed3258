"""Putting the stages together.

- ``stages``: find faces -> select (the keep hook) -> plan crops -> cut -> replace in batches -> paste -> outcomes.
- ``options``: ``AnonymizeOptions`` and the limits the command line shares.
- ``photo``: whole photos, faces batched across photos.
- ``batch``: files and folders: journal-checked resume, per-file isolation, atomic outputs.
- ``report``: the report records and the JSON report.
"""
