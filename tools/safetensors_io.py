"""
The safetensors format, read and written with the standard library and torch only (no new
dependency): most Hugging Face repositories ship model.safetensors, and transformers 5's
save_pretrained writes nothing else.

    save_file({name: tensor}, path, metadata)    load_file(path) -> {name: tensor}

A file is an 8-byte little-endian header length N, then N bytes of JSON, then the raw tensors:

    {"wte.weight": {"dtype": "F32", "shape": [50304, 768], "data_offsets": [0, 154533888]},
     ..., "__metadata__": {"format": "pt"}}

each tensor little-endian and C-contiguous at [begin, end) of the bytes after the header. Unlike
a pickle, reading one runs no code.
"""
import json
import struct

import torch

from tools.common import UserError, atomic_write

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100_000_000  # the format's own bound; a larger length means a file of another kind
ALIGN = 8  # the header is padded with spaces so that the tensors start 8-byte aligned


def _raw_bytes(t):
    """The tensor's bytes in C order, little-endian (every machine torch runs on today is)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def save_file(tensors, path, metadata=None):
    """Write {name: tensor} as a safetensors file (atomically). Tensors that share storage must
    be stored once: pass one name for a tied weight (a reader re-ties it from the config)."""
    header, offset, chunks = {}, 0, []
    for name, t in tensors.items():
        assert t.dtype in NAMES, f"{name}: no safetensors dtype for {t.dtype}"
        data = _raw_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % ALIGN)

    def write(f):
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)
    atomic_write(path, write)


def load_file(path):
    """{name: tensor} of a safetensors file. A truncated, damaged or foreign file is a UserError
    naming it and what is wrong."""
    with open(path, "rb") as f:
        blob = bytearray(f.read())  # writable: the tensors are views of it, not copies

    def bad(why):
        return UserError(f"{path}: not a readable safetensors file ({why}); download or export "
                         "it again")
    if len(blob) < 8:
        raise bad(f"{len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(MAX_HEADER, len(blob) - 8):
        raise bad(f"a header of {n} bytes in a file of {len(blob)}")
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"its header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    header.pop("__metadata__", None)
    start, room = 8 + n, len(blob) - 8 - n  # where the tensors' bytes begin, and how many
    tensors = {}
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"tensor {name!r}: a header entry without a known dtype, shape and "
                      f"data_offsets ({type(e).__name__}: {e})") from None
        count = torch.Size(shape).numel() if min(shape, default=0) >= 0 else -1
        if count < 0 or not 0 <= begin <= end <= room or end - begin != count * dtype.itemsize:
            raise bad(f"tensor {name!r}: bytes [{begin}, {end}) for shape {shape} of "
                      f"{entry['dtype']}, in {room} bytes of data (cut short?)")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(blob, dtype=dtype, count=count, offset=start + begin)
        tensors[name] = flat.reshape(shape)
    return tensors
