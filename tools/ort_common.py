"""What tools/make_test_models.py and tools/ort_parity.py share: ONNX Runtime sessions and the
safetensors writer.

Both run as `python tools/X.py`, which puts tools/ on sys.path. `host export` runs ort_parity.py
embedded, with `python -c`, and installs this file as the module `ort_common` first
(host/src/export/parity.rs).
"""

import json
import struct

import numpy as np
import onnxruntime as ort

# ONNX Runtime graph optimization levels by name; `all` is ORT's own default.
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# safetensors dtype names.
DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def session(path, opt_level="all", threads=1):
    """An ONNX Runtime session on the CPU execution provider for the model at `path`, with graph
    optimizations `opt_level` (a key of OPT_LEVELS) and `threads` intra-op threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def logits(sess, x):
    """The model's `logits` for the batch `x` (its `input`, a float32 numpy array)."""
    return sess.run(["logits"], {"input": x})[0]


def save_safetensors(path, tensors, metadata=None):
    """Writes numpy arrays as a safetensors file, by hand (the venv has no `safetensors` package)."""
    names = {v: k for k, v in DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": names[arr.dtype.type], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
