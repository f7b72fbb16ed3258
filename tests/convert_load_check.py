"""Run by tests/test_convert_weights.py in a fresh interpreter, offline, with none of the project's modules on
the path: loads converted repositories as a user would and runs the fixture's cases on them.

    python convert_load_check.py FIXTURE_DIR REPORT_JSON REPO[:VARIANT] ...

Writes, per repository, the classes it loaded, the dtypes and, per fixture case, the largest difference from the
reference implementation's expected output.
"""

import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DDIMScheduler, DiffusionPipeline


def main(fixture_dir: Path, report_path: Path, repos: list[str]) -> None:
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    cases = [case for case in manifest["cases"] if case.get("expected_output")]

    def image(name):
        return PIL.Image.open(fixture_dir / "inputs" / f"{name}.png").convert("RGB")

    def images(names):
        return [image(name) for name in names] if isinstance(names, list) else image(names)

    report = {}
    for spec in repos:
        path, _, variant = spec.partition(":")
        variant = variant or None
        dtype = torch.float16 if variant == "fp16" else torch.float32
        pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True, dtype=dtype, variant=variant)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # the manifest's deterministic cases
        pipe.set_progress_bar_config(disable=True)
        entry = {
            "pipeline": [type(pipe).__module__, type(pipe).__name__],
            "components": {name: type(c).__name__ for name, c in pipe.components.items()},
            "dtypes": {name: str(c.dtype) for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)},
            "default_image_size": pipe.default_image_size,
            "cases": {},
        }
        for case in cases:
            case_spec = case["case_spec"]
            kwargs = dict(
                image=images(case_spec["conditioning"]),
                anonymization_degree=case_spec["anonymization_degree"],
                guidance_scale=case_spec["guidance_scale"],
                num_inference_steps=case_spec["num_inference_steps"],
                height=case_spec["size"],
                width=case_spec["size"],
                output_type="np",
                latents=torch.from_numpy(np.load(fixture_dir / case["init_latents"]["file"])),
            )
            if case_spec["anonymization_degree"] == 0:
                kwargs["source_image"] = images(case_spec["source"])
            output = pipe(**kwargs).images
            expected = np.load(fixture_dir / case["expected_output"]["file"])
            entry["cases"][case["name"]] = {
                "shape": list(output.shape),
                "finite": bool(np.isfinite(output).all()),
                "max_abs_diff": float(np.abs(output.astype(np.float32) - expected).max()),
            }
            if variant:  # one case shows that the variant runs
                break
        entry["project_modules_imported"] = sorted({"pipeline_face_anon", "modeling_referencenet"} & set(sys.modules))
        report[spec] = entry
        del pipe
    report_path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
