"""What model a report is of: the fingerprint of its checkpoint file and of its weights.

``meta["checkpoint"]`` holds, when known:

- ``"state_dict"``: a SHA-256 over the model's state_dict (every tensor's name, dtype, shape and
  bytes, in name order) with the number of tensors and of values: the identity of the weights,
  whatever file they were saved in (`diagnose_model` records it for a module or an exported
  program);
- ``"file"``: the checkpoint file's size and SHA-256, read in 1 MiB chunks (the command line
  records it).

`same_checkpoint` tells whether two reports come from the same weights (by the state_dict hash
when both have one, else by the file's), or that it cannot tell.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

CHUNK = 1 << 20  # bytes read at a time when hashing a file


def file_fingerprint(path: str | Path, chunk: int = CHUNK) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file, read ``chunk`` bytes at a time (the file is
    never held whole in memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def state_dict_fingerprint(model) -> dict | None:
    """``{"sha256": hex, "tensors": count, "values": count}`` of a module's (or an exported
    program's) state_dict: each tensor's name, dtype, shape and bytes, in name order; None
    when the model has no state_dict."""
    state = getattr(model, "state_dict", None)
    if state is None:
        return None
    tensors = state() if callable(state) else state
    h = hashlib.sha256()
    count = values = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        count += 1
        values += t.numel()
    return {"sha256": h.hexdigest(), "tensors": count, "values": values}


def _fingerprints(report) -> dict:
    meta = report.meta if isinstance(getattr(report, "meta", None), dict) else {}
    fp = meta.get("checkpoint")
    return fp if isinstance(fp, dict) else {}


def same_checkpoint(report_a, report_b) -> bool | None:
    """True when the two reports come from the same weights, False when not, None when a
    report does not record them (older reports, precomputed embeddings)."""
    fa, fb = _fingerprints(report_a), _fingerprints(report_b)
    for key in ("state_dict", "file"):
        a, b = fa.get(key), fb.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and "sha256" in a and "sha256" in b:
            return a["sha256"] == b["sha256"]
    return None


def checkpoint_phrase(report_a, report_b, sides: tuple[str, str] = ("A", "B")) -> str:
    """One phrase: "the same checkpoint (state_dict sha256 1a2b3c4d...)", "different
    checkpoints" or why it is not known."""
    same = same_checkpoint(report_a, report_b)
    if same is None:
        missing = [
            s for s, r in zip(sides, (report_a, report_b), strict=True) if not _fingerprints(r)
        ]
        who = " and ".join(missing) if missing else "they"
        return f"checkpoints: unknown ({who} record no checkpoint fingerprint)"
    if not same:
        return "checkpoints: different"
    fp = _fingerprints(report_a)
    key = "state_dict" if "state_dict" in fp and "state_dict" in _fingerprints(report_b) else "file"
    return f"checkpoints: the same ({key} sha256 {fp[key]['sha256'][:12]})"
