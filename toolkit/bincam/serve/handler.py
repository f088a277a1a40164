"""Requests → one engine call → responses, for the Triton Python backend (and tests).

Each request carries exactly one image input — ``images`` float32 ``[N,3,S,S]`` in [0, 1],
``pixels`` uint8 ``[N,H,W,3]`` (RGB as clients have them, brought into the model's frame by the
fit rule its card records, ``data.fit``: square or CelebA-aligned 178×218 for a face model, any
size for ``stretch``/``crop``/``pad``) or ``encoded`` bytes ``[N]``
(PNG/JPEG files) — and asks for any of ``logits``, ``probabilities``, ``energy`` and ``heatmaps``
(uint8 ``⌊255·F + ½⌋``, at an explaining file's own map size). Only what is asked is computed:
logits alone run the forward pass; energy or heatmaps run ``explain``. The valid requests of one
call are concatenated into one engine batch per kind of work; a bad request gets its own error and
does not touch the others (an engine failure that is not a user error is retried request by
request, so it stays with its request).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from bincam.core.checks import check_logits
from bincam.errors import BincamError

IMAGE_INPUTS = ("images", "pixels", "encoded")
MAX_SIDE = 4096                 # pixels: largest H or W accepted
MAX_ENCODED_BYTES = 32 << 20    # encoded: largest file accepted
MAX_DECODED_PIXELS = 64_000_000
OUTPUTS = ("logits", "probabilities", "energy", "heatmaps")
EXPLAINED = {"energy", "heatmaps"}


@dataclass
class Request:
    """One client request: its image input (by name) and the outputs it asks for."""

    inputs: dict[str, np.ndarray]
    requested: list[str]


def _decode(data: np.ndarray, size: int, fit: str = "celeba") -> np.ndarray:
    """Encoded image files ``[N]`` → uint8 ``[N, S, S, 3]`` in the model's frame."""
    from PIL import Image, UnidentifiedImageError

    from bincam.data.fit import fit_image

    out = []
    for i, blob in enumerate(np.asarray(data, dtype=object).reshape(-1)):
        blob = bytes(blob)
        if len(blob) > MAX_ENCODED_BYTES:
            raise BincamError(f"encoded image {i} has {len(blob)} bytes; the limit is "
                              f"{MAX_ENCODED_BYTES}")
        try:
            with Image.open(io.BytesIO(blob), formats=("PNG", "JPEG")) as img:
                if img.width * img.height > MAX_DECODED_PIXELS or max(img.size) > MAX_SIDE:
                    raise BincamError(f"encoded image {i} is {img.width}×{img.height}: sides up "
                                      f"to {MAX_SIDE} are taken")
                out.append(np.asarray(fit_image(img.convert("RGB"), size, fit)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BincamError(f"encoded image {i} declares too many pixels (a decompression "
                              "bomb?)") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BincamError(f"encoded image {i} does not decode as a PNG or JPEG image "
                              f"({exc.__class__.__name__})") from None
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def _pixels(data: np.ndarray, size: int, fit: str = "celeba") -> np.ndarray:
    from PIL import Image

    from bincam.data.fit import fit_image

    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
        raise BincamError(f"pixels must be uint8 [N, H, W, 3], got {data.dtype} "
                          f"{list(data.shape)}")
    if min(data.shape[1:3]) < 8 or max(data.shape[1:3]) > MAX_SIDE:
        raise BincamError(f"pixels of {data.shape[2]}×{data.shape[1]}: sides of 8 to {MAX_SIDE} "
                          "are taken")
    if data.shape[1:3] == (size, size):
        return data
    return np.stack([np.asarray(fit_image(Image.fromarray(p), size, fit)) for p in data])


def batch_of(request: Request, size: int, fit: str = "celeba") -> np.ndarray:
    """The request's images as the engines take them, ``[N, 3, S, S]`` (uint8 or float32);
    ``fit``: the model's fit rule (``data.fit``) for pixels and encoded files."""
    given = [n for n in IMAGE_INPUTS if n in request.inputs]
    if len(given) != 1:
        raise BincamError(f"give exactly one of the inputs {', '.join(IMAGE_INPUTS)}; got "
                          f"{', '.join(given) or 'none'}")
    unknown = sorted(set(request.requested) - set(OUTPUTS))
    if unknown:
        raise BincamError(f"unknown output(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(OUTPUTS)}")
    name, data = given[0], request.inputs[given[0]]
    if name == "encoded":
        x = _decode(data, size, fit).transpose(0, 3, 1, 2)
    elif name == "pixels":
        x = _pixels(np.asarray(data), size, fit).transpose(0, 3, 1, 2)
    else:
        x = np.asarray(data)
        if x.dtype != np.float32:
            raise BincamError(f"images must be float32 [N, 3, {size}, {size}], got {x.dtype}")
    if len(x) == 0:
        raise BincamError("the request holds no images (batch of 0)")
    from bincam.core.checks import check_batch

    check_batch(x, size)  # shape, range and NaN/Inf, naming the image
    return np.ascontiguousarray(x)


class Handler:
    """Answers requests with an engine (``runtime.open_engine``), method and mode."""

    def __init__(self, engine, method: str = "gradcam", mode: str = "predicted"):
        spec = engine.info.explain
        self.engine = engine
        self.method, self.mode = (spec["method"], spec["mode"]) if spec else (method, mode)
        self.size = int(engine.info.image_size)
        self.map_size = int(spec["map_size"][0]) if spec else self.size  # heatmaps' side

    def handle(self, requests: list[Request]) -> list[dict[str, np.ndarray] | BincamError]:
        """One result per request, in order: its outputs, or the error that stopped it."""
        results: list = [None] * len(requests)
        batches: dict[bool, list[tuple[int, np.ndarray]]] = {False: [], True: []}
        for i, request in enumerate(requests):
            try:
                x = batch_of(request, self.size, self.engine.info.input_fit)
            except BincamError as exc:
                results[i] = exc
                continue
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
                results[i] = BincamError(f"the request could not be read "
                                         f"({exc.__class__.__name__}: {str(exc)[:120]})")
                continue
            explained = bool(EXPLAINED & set(request.requested)) or not request.requested
            batches[explained].append((i, x))
        for explained, items in batches.items():
            if items:
                self._run(items, explained, requests, results)
        return results

    def _run(self, items, explained: bool, requests, results) -> None:
        """One engine call for ``items``; if it fails for another reason than a user error,
        each request is retried alone so only the one that breaks the engine fails."""
        try:
            self._run_batch(items, explained, requests, results)
        except Exception as exc:  # noqa: BLE001 - isolate the request that broke the engine
            if len(items) == 1:
                results[items[0][0]] = BincamError(
                    f"the model failed on this request ({exc.__class__.__name__}: "
                    f"{str(exc)[:160]})")
                return
            for item in items:
                self._run([item], explained, requests, results)

    def _run_batch(self, items, explained: bool, requests, results) -> None:
        x = np.concatenate([b.astype(np.float32) / 255.0 if b.dtype == np.uint8 else b
                            for _, b in items])
        wanted = set().union(*(requests[i].requested or OUTPUTS for i, _ in items))
        try:
            if explained:
                e = self.engine.explain(x, self.method, self.mode)
                out = {"logits": e.logits}
                if "energy" in wanted:
                    out["energy"] = e.proportional_energy()
                if "heatmaps" in wanted:
                    out["heatmaps"] = np.floor(255.0 * e.heatmaps(self.map_size) + 0.5
                                               ).astype(np.uint8)
            else:
                out = {"logits": self.engine.run_forward(x)}
        except BincamError as exc:
            for i, _ in items:
                results[i] = exc
            return
        out["logits"] = np.asarray(out["logits"], dtype=np.float32)
        items, out = _drop_nonfinite(items, out, results)
        out["probabilities"] = (1.0 / (1.0 + np.exp(-out["logits"].astype(np.float64)))
                                ).astype(np.float32)
        start = 0
        for i, batch in items:
            wanted = requests[i].requested or list(OUTPUTS)
            results[i] = {n: np.ascontiguousarray(out[n][start:start + len(batch)]).astype(
                np.float32 if n != "heatmaps" else np.uint8) for n in wanted}
            start += len(batch)


def _drop_nonfinite(items, out: dict, results: list):
    """Requests whose logits are not all finite get an error (a NaN logit is no answer); the
    other requests' rows are kept."""
    keep, rows, start = [], [], 0
    for i, batch in items:
        span = range(start, start + len(batch))
        start += len(batch)
        try:
            check_logits(out["logits"][span.start:span.stop],
                         [f"image {j}" for j in range(len(batch))])
        except BincamError as exc:
            results[i] = exc
            continue
        keep.append((i, batch))
        rows += span
    index = np.asarray(rows, dtype=np.int64)
    return keep, {name: value[index] for name, value in out.items()}
