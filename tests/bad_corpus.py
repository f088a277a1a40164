"""The bad-input corpus: broken checkpoints, cards, ONNX files, images, datasets, weight files
and option values, generated on the fly (no binaries are checked in), and a runner that feeds
each case to the CLI in-process and classifies what happened.

A case passes when the command exits with status 2, prints exactly one line that starts with
``error:`` and contains the case's expected text, prints no traceback, and leaves every file
under the corpus folder as it was (nothing partial, nothing overwritten).

``tests/test_bad_corpus.py`` runs every case in CI; ``benchmarks/bad_input_corpus.py`` writes
the table of cases, outcomes and messages.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import traceback
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "synth-small-balanced"


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str            # text the one error line must contain


@dataclass
class Outcome:
    case: Case
    status: int | None
    lines: list[str]       # stderr lines, whitespace-collapsed
    traceback: str
    changed: list[str]     # files created, removed or modified under the corpus folder

    @property
    def verdict(self) -> str:
        errors = [ln for ln in self.lines if ln.startswith("error:")]
        if self.traceback:
            return "traceback"
        if self.status == 0:
            return "silent"
        if self.changed:
            return "partial"
        if self.status != 2 or len(errors) != 1 or self.case.expect not in errors[0]:
            return "unclear"
        return "clean"

    @property
    def message(self) -> str:
        errors = [ln for ln in self.lines if ln.startswith("error:")]
        return errors[0] if errors else (self.lines[-1] if self.lines else "")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def run_case(case: Case, folder: Path) -> Outcome:
    """Run ``bincam ARGV`` in this process (stderr captured) and compare the folder after."""
    from bincam.cli.app import main

    before = snapshot(folder)
    err, tb, status = io.StringIO(), "", None
    argv, sys.argv = sys.argv, ["bincam", *case.argv]
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            main()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - anything else is the defect this corpus looks for
        tb = traceback.format_exc()
    finally:
        sys.argv = argv
    after = snapshot(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    for created in sorted(after.keys() - before.keys(), reverse=True):  # the next case starts clean
        path = folder / created
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    text = err.getvalue()
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in text:
        tb = tb or text
    return Outcome(case, status, lines, tb, changed)


# --- fixtures ---------------------------------------------------------------------------------

def _checkpoint(folder: Path, card_edit=None, weights_edit=None) -> str:
    shutil.copytree(SMALL, folder)
    if card_edit is not None:
        card = json.loads((folder / "card.json").read_text())
        text = card_edit(card)
        (folder / "card.json").write_text(text if isinstance(text, str) else json.dumps(card))
    if weights_edit is not None:
        from safetensors.numpy import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        weights_edit(state)
        save_file(state, str(folder / "model.safetensors"))
    return str(folder)


def _set(key, value):
    def edit(card):
        card[key] = value
    return edit


def _block(key, **changes):
    def edit(card):
        card.setdefault(key, {}).update(changes)
    return edit


def _arch(**changes):
    def edit(card):
        card["arch"].update(changes)
    return edit


def _first_conv(state):
    return next(k for k in state if k.endswith("weight") and state[k].ndim == 4)


CARD_CASES = {
    "39 names": (lambda c: c.__setitem__("attributes", c["attributes"][:39]),
                 "attributes: 39 names for a net with 40 outputs"),
    "41 names": (lambda c: c.__setitem__("attributes", c["attributes"] + ["Extra"]),
                 "attributes: 41 names for a net with 40 outputs"),
    "duplicate names": (lambda c: c["attributes"].__setitem__(1, c["attributes"][0]),
                        "attributes: names repeat: 5_o_Clock_Shadow"),
    "attributes 5": (_set("attributes", 5), "attributes: Input should be a valid list"),
    "image_size big": (_set("image_size", "big"), "image_size: Input should be a valid integer"),
    "image_size 0": (_set("image_size", 0), "image_size: Input should be greater than or equal"),
    "image_size -5": (_set("image_size", -5), "image_size: Input should be greater than or equal"),
    "image_size 100000": (_set("image_size", 100000), "image_size: Input should be less than"),
    "arch string": (_set("arch", "small"), "arch: Input should be a valid dictionary"),
    "arch unknown key": (_arch(depth=3), "unknown key(s) depth for small"),
    "validation list": (_set("validation", [1, 2]), "validation: Input should be a valid dict"),
    "pixel_range x": (_set("pixel_range", "x"), "pixel_range: Input should be a valid"),
    "mean length 1": (_set("mean", [0.5]), "mean: wrong number of values"),
    "class counts 3": (_set("positive_counts", [1, 2, 3]),
                       "positive_counts: needs one count ≥ 0 per attribute"),
    "not json": (lambda c: "{not json", "card.json"),
    "no format": (lambda c: c.pop("format"), "format"),
    # the optional blocks, each broken in type or in value
    "validation epoch string": (_block("validation", epoch="3"),
                                "validation.epoch: Input should be a valid integer"),
    "validation epoch -1": (_block("validation", epoch=-1),
                            "validation.epoch: Input should be greater than or equal to 0"),
    "validation means string": (_block("validation", means="abc"),
                                "validation.means: Input should be a valid dictionary"),
    "validation mean not a number": (_block("validation", means={"error": "low"}),
                                     "validation.means.error: Input should be a valid number"),
    "validation loss NaN": (_block("validation", loss=float("nan")),
                            "validation.loss: Input should be a finite number"),
    "validation mean inf": (_block("validation", means={"error": float("inf")}),
                            "validation.means.error: an error rate is a number"),
    "validation unknown attribute": (_block("validation", per_attribute={"Nope": {}}),
                                     "validation.per_attribute: 'Nope' is not an attribute"),
    "training list": (_set("training", [1]), "training: Input should be a valid dictionary"),
    "training weighting": (_block("training", config={"weighting": "heavy"}),
                           "training.config.weighting: Input should be 'none', 'balanced' or"),
    "training class weights short": (_block("training", class_weights={"positive": [1.0],
                                                                       "negative": [1.0]}),
                                     "training.class_weights: needs one positive and one negative"),
    "training epoch float": (_block("training", epoch=2.5),
                             "training.epoch: Input should be a valid integer"),
    "cam_layers string": (_set("cam_layers", "layer4"), "cam_layers: Input should be a valid list"),
    "default_cam_layer 4": (_set("default_cam_layer", 4),
                            "default_cam_layer: Input should be a valid string"),
    "default_cam_layer unknown": (_set("default_cam_layer", "layer9"),
                                  "default_cam_layer: 'layer9' is not in cam_layers"),
    "negative_counts -1": (lambda c: c["negative_counts"].__setitem__(0, -1),
                           "negative_counts: needs one count ≥ 0 per attribute"),
    "input_fit unknown": (_set("input_fit", "zoom"), "input_fit: Input should be 'celeba'"),
    "std NaN": (_set("std", [1.0, float("nan"), 1.0]), "std.1: Input should be a finite number"),
    "pixel_range flat": (_set("pixel_range", [1, 1]), "pixel_range: [1, 1] is not an interval"),
    "bincam_version 5": (_set("bincam_version", 5), "bincam_version: Input should be a valid"),
}
WEIGHT_CASES = {
    "NaN weights": (lambda s: s[_first_conv(s)].__setitem__((0, 0, 0, 0), np.nan),
                    "tensor conv1.weight holds NaN or Inf"),
    "int32 tensor": (lambda s: s.__setitem__(_first_conv(s), s[_first_conv(s)].astype(np.int32)),
                     "int32"),
    "missing tensor": (lambda s: s.pop(_first_conv(s)), "missing"),
    "wrong shape": (lambda s: s.__setitem__(_first_conv(s), s[_first_conv(s)][:1]), "shape"),
}


def _png(path: Path, array: np.ndarray) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _bomb(path: Path) -> str:
    """A 20000×20000 PNG of a few hundred kB (one bit per pixel)."""
    from PIL import Image

    Image.new("1", (20000, 20000)).save(path)
    return str(path)


def _torch_zip(path: Path, edit) -> str:
    """A torch zip checkpoint of one small tensor, then ``edit(entries)`` on its members."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    edit(entries)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return str(path)


def _drop_storage(entries):
    entries.pop(next(n for n in entries if "/data/" in n))


def _odd_storage(entries):
    key = next(n for n in entries if "/data/" in n)
    entries[key] = entries[key][:-3]


def _evil_pickle(path: Path) -> str:
    """A legacy torch pickle whose first object asks for ``os.system`` (never called)."""
    payload = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    path.write_bytes(payload)
    return str(path)


def _dataset(folder: Path, n: int = 24) -> Path:
    from bincam.data.synth import synthesize

    return synthesize(folder, n, seed=3, size=112)


def _edit_lines(folder: Path, name: str, edit) -> None:
    path = folder / name
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def _onnx_files(folder: Path, ckpt: str) -> dict[str, str]:
    import onnx
    from onnx import helper, numpy_helper

    from bincam.checkpoint import load_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx

    folder.mkdir(parents=True, exist_ok=True)
    good = export_checkpoint(load_checkpoint(ckpt))
    files = {"good": str(save_onnx(good, folder / "good.onnx"))}
    nan = onnx.ModelProto()
    nan.CopyFrom(good)
    init = next(i for i in nan.graph.initializer if len(i.dims) == 4)
    array = numpy_helper.to_array(init).copy()
    array.flat[:] = np.nan
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    files["nan"] = str(save_onnx(nan, folder / "nan.onnx"))
    (folder / "garbage.onnx").write_bytes(os.urandom(4096))
    files["garbage"] = str(folder / "garbage.onnx")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                "plain", [x], [y]))
    onnx.save(plain, folder / "plain.onnx")
    files["plain"] = str(folder / "plain.onnx")
    return files


def build(root: Path) -> list[Case]:
    """Write every fixture under ``root`` and return the cases (paths point into ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    good = _checkpoint(root / "ckpt" / "good")
    faces = root / "images" / "faces"
    from bincam.data.batches import synthetic_faces

    for i, face in enumerate(synthetic_faces(2, 112, seed=1)):
        _png(faces / f"f{i}.png", face)
    notimage = root / "images" / "notimage.png"
    notimage.write_text("not an image")
    (root / "images" / "empty").mkdir()
    bomb = _bomb(root / "images" / "bomb.png")
    taken = root / "taken.txt"
    taken.write_text("keep me")
    out = str(root / "out")            # never created by a clean refusal
    onnx_files = _onnx_files(root / "onnx", good)

    cases: list[Case] = []

    def add(name, argv, expect):
        cases.append(Case(name, [str(a) for a in argv], expect))

    # checkpoints: every broken card and weight file through every command that reads one
    broken = {}
    for label, (edit, expect) in CARD_CASES.items():
        broken[label] = (_checkpoint(root / "ckpt" / label.replace(" ", "_"), card_edit=edit),
                         expect)
    for label, (edit, expect) in WEIGHT_CASES.items():
        broken[label] = (_checkpoint(root / "ckpt" / label.replace(" ", "_"),
                                     weights_edit=edit), expect)
    for label, (path, expect) in broken.items():
        add(f"info: card {label}", ["info", path], expect)
        add(f"cam: card {label}", ["cam", path, faces, "--out", out], expect)
        add(f"export: card {label}", ["export", path, "--out", root / "out.onnx"], expect)
        add(f"analyze: card {label}", ["analyze", "--model", f"m={path}", "--data",
                                       f"synth:{root / 'data' / 'good'}", "--out", out], expect)
        add(f"bench: card {label}", ["bench", path, "--iters", "3", "--rounds", "1"], expect)
        add(f"serve: card {label}", ["serve", path], expect)
    return cases + _more_cases(root, good, faces, notimage, bomb, taken, out, onnx_files)


def _more_cases(root, good, faces, notimage, bomb, taken, out, onnx_files) -> list[Case]:
    cases: list[Case] = []

    def add(name, argv, expect):
        cases.append(Case(name, [str(a) for a in argv], expect))

    cam = ["cam", good, faces, "--out", out]
    for args, expect in [
        (["--batch-size", "0"], "--batch-size must be between 1 and 4096, got 0"),
        (["--batch-size", "-1"], "--batch-size must be between 1 and 4096, got -1"),
        (["--batch-size", "abc"], "--batch-size"),
        (["--size", "0"], "--size must be between 8 and 4096 pixels, got 0"),
        (["--size", "-5"], "--size must be between 8 and 4096 pixels, got -5"),
        (["--method", "nope"], "nope"),
        (["--mode", "nope"], "nope"),
        (["--attributes", "Nope"], "Nope"),
        (["--attributes", "99"], "99"),
        (["--layer", "nope"], "nope"),
        (["--engine", "nope"], "nope"),
        (["--on-error", "nope"], "--on-error must be skip or fail"),
        (["--bogus"], "--bogus"),
    ]:
        add(f"cam {' '.join(args)}", cam + args, expect)
    add("cam --out a file", ["cam", good, faces, "--out", taken], "is a file")
    add("cam --out inside a file", ["cam", good, faces, "--out", taken / "sub"],
        "lies inside a file")
    add("cam missing input", ["cam", good, root / "nope.png", "--out", out], "does not exist")
    add("cam empty folder", ["cam", good, root / "images" / "empty", "--out", out],
        "no input files")
    add("cam not an image, fail", cam[:3] + [notimage, "--out", out, "--on-error", "fail"],
        "nothing written")
    add("cam only a non-image", ["cam", good, notimage, "--out", out], "no input could be read")
    add("cam bomb, fail", ["cam", good, bomb, "--out", out, "--on-error", "fail"],
        "decompression bomb")
    add("cam bomb, skip", ["cam", good, bomb, "--out", out], "no input could be read")
    add("cam missing model", ["cam", root / "nope", faces, "--out", out], "does not exist")
    add("cam folder without card", ["cam", root / "images", faces, "--out", out], "card.json")
    add("cam garbage onnx", ["cam", onnx_files["garbage"], faces, "--out", out], "garbage.onnx")
    add("cam plain onnx", ["cam", onnx_files["plain"], faces, "--out", out], "bincam export")
    add("cam NaN onnx", ["cam", onnx_files["nan"], faces, "--out", out],
        "logits are NaN or Inf for 2 of 2 image(s)")

    export = ["export", good, "--out", root / "m.onnx"]
    for args, expect in [
        (["--gradients", "nope"], "--gradients must be one of"),
        (["--precision", "nope"], "--precision"),
        (["--half-outputs"], "--half-outputs needs --precision fp16"),
        (["--half-outputs", "--precision", "fp16", "--explain"], "--half-outputs needs"),
        (["--layer", "nope"], "nope"),
        (["--method", "hirescam"], "--explain"),
        (["--explain", "--map-size", "0"], "--map-size"),
        (["--explain", "--map-dtype", "int7"], "--map-dtype"),
        (["--explain", "--cam-precision", "float8"], "--cam-precision"),
        (["--explain", "--masks", root / "nope.npz"], "nope.npz"),
        (["--explain", "--explain-attributes", "Nope"], "Nope"),
        (["--triton-repo", taken], "is a file"),
        (["--onnx", onnx_files["good"]], "--onnx"),
    ]:
        add(f"export {' '.join(str(a) for a in args)}", export + args, expect)
    add("export --out a folder", ["export", good, "--out", root / "images"], "is a folder")
    add("export --out inside a file", ["export", good, "--out", taken / "m.onnx"],
        "lies inside a file")
    add("export nothing", ["export", "--out", root / "m.onnx"], "checkpoint")
    add("export --onnx missing", ["export", "--onnx", root / "nope.onnx", "--out",
                                  root / "m.onnx"], "nope.onnx")
    add("export --onnx garbage", ["export", "--onnx", onnx_files["garbage"], "--activation",
                                  "a", "--logits", "y", "--out", root / "m.onnx"],
        "garbage.onnx")
    add("export --onnx bad tensor", ["export", "--onnx", onnx_files["plain"], "--activation",
                                     "nope", "--logits", "y", "--out", root / "m.onnx"], "nope")
    add("info garbage onnx", ["info", onnx_files["garbage"]], "is not a loadable ONNX model")
    add("info plain onnx", ["info", onnx_files["plain"]], "has no bincam metadata")
    add("info missing onnx", ["info", root / "missing.onnx"], "ONNX model")

    _data_cases(root, good, out, taken, add)
    return cases


def _data_cases(root, good, out, taken, add) -> None:
    data = _dataset(root / "data" / "good")
    variants = {}

    def variant(label, edit):
        folder = root / "data" / label.replace(" ", "_")
        shutil.copytree(data.parent, folder)
        edit(folder / "celeba")
        variants[label] = folder

    variant("duplicate row", lambda f: _edit_lines(
        f, "list_attr_celeba.txt", lambda ls: ls.__setitem__(3, ls[2])))
    variant("partition 7", lambda f: _edit_lines(
        f, "list_eval_partition.txt", lambda ls: ls.__setitem__(0, ls[0].split()[0] + " 7")))
    variant("label 2", lambda f: _edit_lines(
        f, "list_attr_celeba.txt", lambda ls: ls.__setitem__(2, ls[2].rsplit(" ", 1)[0] + " 2")))
    variant("short row", lambda f: _edit_lines(
        f, "list_attr_celeba.txt", lambda ls: ls.__setitem__(3, ls[3].rsplit(" ", 3)[0])))
    variant("corrupt cues", lambda f: _edit_lines(
        f, "cues.jsonl", lambda ls: ls.__setitem__(1, ls[1][:-7])))
    variant("missing image", lambda f: (f / "img_align_celeba" /
                                        sorted(os.listdir(f / "img_align_celeba"))[-1]).unlink())
    variant("no partition file", lambda f: (f / "list_eval_partition.txt").unlink())

    analyze = ["analyze", "--model", f"m={good}", "--out", out, "--split", "all"]
    spec = f"synth:{data.parent}"
    for label, expect in [("duplicate row", "list_attr_celeba.txt:4: image 000001.jpg is listed "
                                            "twice (first on line 3)"),
                          ("partition 7", "list_eval_partition.txt:1: partition values must be "
                                          "0 (train), 1 (valid) or 2 (test), got 7"),
                          ("label 2", "list_attr_celeba.txt:3: attribute values must be 1 or -1"),
                          ("short row", "list_attr_celeba.txt:4: expected an image name and 40 "
                                        "values, got 39"),
                          ("corrupt cues", "cues.jsonl:2: not a cue record"),
                          ("missing image", "missing"),
                          ("no partition file", "list_eval_partition.txt")]:
        add(f"analyze data {label}", analyze + ["--data", f"synth:{variants[label]}"], expect)
    for args, expect in [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--limit", "-1"], "--limit must be at least 1"),
        (["--batch-size", "0"], "--batch-size"),
        (["--shard-size", "0"], "--shard-size"),
        (["--shard-size", "100", "--batch-size", "64"], "multiple"),
        (["--workers", "0"], "--workers"),
        (["--threads", "0"], "--threads"),
        (["--split", "nope"], "nope"),
        (["--method", "nope"], "nope"),
        (["--engine", "nope"], "--engine must be one of"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--cues", "maybe"], "--cues must be auto, on or off"),
    ]:
        add(f"analyze {' '.join(args)}", analyze + ["--data", spec] + args, expect)
    add("analyze NaN onnx", ["analyze", "--model", f"m={root / 'onnx' / 'nan.onnx'}", "--data",
                             spec, "--out", out, "--split", "all"],
        "logits are NaN or Inf for 24 of 24 image(s) (000001.jpg")
    add("analyze --data bogus kind", analyze + ["--data", "imagenet:/x"], "--data must look like")
    add("analyze --data missing", analyze + ["--data", f"synth:{root / 'nope'}"], "nope")
    add("analyze --out a file", ["analyze", "--model", f"m={good}", "--data", spec, "--out",
                                 taken], "is a file")
    add("analyze model without =", ["analyze", "--model", good, "--data", spec, "--out", out],
        "NAME=")
    add("analyze same names", analyze + ["--model", f"m={good}", "--data", spec], "differ")

    train = ["train", "--data", spec, "--out", out, "--epochs", "1"]
    for args, expect in [
        (["--arch", "nope"], "nope"), (["--width", "0"], "--width"),
        (["--weighting", "nope"], "nope"), (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"), (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"), (["--image-size", "0"], "--image-size"),
        (["--image-size", "100000"], "--image-size"), (["--attributes", "Nope"], "Nope"),
        (["--max-train-images", "0"], "--max-train-images"), (["--threads", "0"], "--threads"),
        (["--resume"], "resume"),
    ]:
        add(f"train {' '.join(args)}", train + args, expect)
    add("train --out a file", ["train", "--data", spec, "--out", taken], "is a file")
    add("train duplicate row", ["train", "--data", f"synth:{variants['duplicate row']}",
                                "--out", out], "list_attr_celeba.txt:4: image 000001.jpg is listed twice")

    bench = ["bench", good, "--iters", "3", "--rounds", "1"]
    for args, expect in [
        (["--engines", "nope"], "nope"), (["--batch", "a"], "--batch"), (["--batch", "0"],
                                                                          "--batch"),
        (["--iters", "5", "--rounds", "2"], "--iters"), (["--warmup", "-1"], "--warmup"),
        (["--images", root / "nope"], "nope"), (["--reference-images", "-1"],
                                                "--reference-images"),
        (["--fidelity-images", "-1"], "--fidelity-images"), (["--method", "nope"], "nope"),
        (["--device", "tpu"], "--device"), (["--json", taken / "x.json"], "lies inside a file"),
        (["--markdown", root / "images"], "is a folder"), (["--threads", "0"], "--threads"),
    ]:
        add(f"bench {' '.join(str(a) for a in args)}", bench + args, expect)
    add("bench arch:nope", ["bench", "arch:nope"], "nope")
    add("bench NaN onnx", ["bench", root / "onnx" / "nan.onnx", "--engines", "ort", "--iters",
                           "3", "--rounds", "1", "--batch", "1"],
        "logits are NaN or Inf for 1 of 1 image(s) (benchmark image 0)")

    synth = ["data", "synth", "--out", root / "newdata", "--n", "2"]
    for args, expect in [(["--n", "0"], "--n"), (["--n", "-1"], "--n"), (["--size", "0"],
                                                                         "--size"),
                         (["--workers", "0"], "--workers"), (["--split", "nope"], "nope")]:
        add(f"data synth {' '.join(args)}", synth + args, expect)
    add("data synth --out a file", ["data", "synth", "--out", taken, "--n", "2"], "is a file")

    affact = root / "affact"
    affact.mkdir()
    (affact / "garbage.pth").write_bytes(os.urandom(2048))
    (affact / "badzip.pth").write_bytes(b"PK\x03\x04" + os.urandom(100))
    conv = lambda p: ["convert-affact", p, "--out", out]  # noqa: E731
    add("convert-affact missing", conv(affact / "nope.pth"), "does not exist")
    add("convert-affact garbage", conv(affact / "garbage.pth"), "garbage.pth")
    add("convert-affact bad zip", conv(affact / "badzip.pth"), "badzip.pth")
    add("convert-affact missing storage",
        conv(_torch_zip(affact / "nostorage.pth", _drop_storage)), "nostorage.pth")
    add("convert-affact odd storage size",
        conv(_torch_zip(affact / "oddstorage.pth", _odd_storage)), "oddstorage.pth")
    add("convert-affact os.system", conv(_evil_pickle(affact / "evil.pth")), "refused")
    add("convert-affact --out a file", ["convert-affact", affact / "garbage.pth", "--out",
                                        taken], "is a file")

    serve = ["serve", good]
    for args, expect in [
        (["--engine", "nope"], "--engine"), (["--device", "tpu"], "--device"),
        (["--http-port", "0"], "--http-port"), (["--http-port", "70000"], "--http-port"),
        (["--http-port", "9000", "--grpc-port", "9000"], "differ"),
        (["--max-batch", "0"], "--max-batch"), (["--instances", "0"], "--instances"),
        (["--max-queue-delay-us", "-1"], "--max-queue-delay-us"),
        (["--method", "nope"], "nope"), (["--mode", "nope"], "nope"),
        (["--threads", "-1"], "--threads"), (["--repo", taken], "is a file"),
        (["--name", "a/b"], "model name 'a/b' may hold only"),
    ]:
        add(f"serve {' '.join(str(a) for a in args)}", serve + args, expect)
    add("serve missing model", ["serve", root / "nope"], "does not exist")
    add("build garbage onnx", ["build", root / "onnx" / "garbage.onnx"], "garbage.onnx")
