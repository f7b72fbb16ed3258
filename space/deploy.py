"""Assemble the face-anon Space (this folder and the package it runs) and upload it to the Hub.

    python space/deploy.py USER/face-anon           # upload to the Space (made if missing)
    python space/deploy.py --assemble FOLDER        # write the Space's files into FOLDER

The Space installs its dependencies from requirements.txt and imports ``face_anon`` from the files
uploaded beside app.py, so it runs exactly this checkout's code.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


SPACE = Path(__file__).resolve().parent
REPO = SPACE.parent
SPACE_FILES = ("README.md", "app.py", "requirements.txt")
# The package (with the bundled detector) and the pipeline's top-level modules.
PACKAGE = ("face_anon", "pipeline_face_anon.py", "modeling_referencenet.py", "original_checkpoint.py")


def assemble(target: Path) -> list[Path]:
    """Copy the Space's files into ``target`` (made if missing, must be empty); the files written."""
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise SystemExit(f"deploy: {target} is not empty")
    for name in SPACE_FILES:
        shutil.copy2(SPACE / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)
    return sorted(path for path in target.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy.py", description=__doc__.splitlines()[0])
    parser.add_argument("space", nargs="?", help="the Space to upload to, e.g. USER/face-anon")
    parser.add_argument("--assemble", metavar="FOLDER", help="write the files into FOLDER instead of uploading")
    parser.add_argument("--private", action="store_true", help="make the Space private if it is created")
    args = parser.parse_args(argv)
    if args.assemble:
        files = assemble(Path(args.assemble))
        print(f"deploy: {len(files)} files in {args.assemble}")
        return 0
    if not args.space:
        parser.error("give the Space (USER/NAME) or --assemble FOLDER")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.space, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        assemble(Path(folder) / "space")
        api.upload_folder(folder_path=Path(folder) / "space", repo_id=args.space, repo_type="space")
    print(f"deploy: uploaded to https://huggingface.co/spaces/{args.space}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
