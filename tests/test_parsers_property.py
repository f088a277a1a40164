"""Property tests (Hypothesis, seeded, 1,000 examples each) for the parsers at bincam's
boundary: CelebA list files, the image loader and the ONNX metadata reader. Whatever the bytes,
each either returns a well-formed result or raises ``BincamError`` — never another exception —
and what it accepts round-trips. (Card parsing: ``test_card_schema.py``.)"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bincam import __version__
from bincam.data.celeba import load_aligned
from bincam.data.listfiles import read_table, write_table
from bincam.errors import BincamError

SETTINGS = settings(max_examples=1000, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
NAMES = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


# --- list files -------------------------------------------------------------------------------

@st.composite
def tables(draw):
    names = draw(st.lists(NAMES, min_size=0, max_size=20, unique=True))
    k = draw(st.integers(1, 6))
    values = draw(st.lists(st.lists(st.integers(-10**6, 10**6), min_size=k, max_size=k),
                           min_size=len(names), max_size=len(names)))
    columns = [f"c{j}" for j in range(k)]
    return names, np.asarray(values, dtype=np.int64).reshape(len(names), k), columns


@SETTINGS
@given(table=tables(), counted=st.booleans())
def test_list_files_round_trip(scratch, table, counted):
    names, values, columns = table
    path = scratch / "table.txt"
    write_table(path, names, values, columns=columns, counted=counted)
    got = read_table(path, counted=counted, header=True)
    assert got.names == names and got.columns == columns
    assert np.array_equal(got.values, values)


LIST_LINES = st.lists(st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.builds(" ".join, st.lists(st.one_of(NAMES, st.integers(-3, 3).map(str)), max_size=6))),
    max_size=12)


@SETTINGS
@given(lines=LIST_LINES, counted=st.booleans(), header=st.booleans(), raw=st.binary(max_size=64))
def test_list_files_never_crash(scratch, lines, counted, header, raw):
    path = scratch / "garbage.txt"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
    try:
        got = read_table(path, counted=counted, header=header, n_values=None if header else 2)
    except BincamError as exc:
        assert str(path) in str(exc)
        return
    assert len(got.names) == len(set(got.names)) == got.values.shape[0]
    assert len(got.lines) == len(got.names)


# --- images -----------------------------------------------------------------------------------

MODES = ["1", "L", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "LA"]
FORMATS = {"PNG": ("1", "L", "P", "RGB", "RGBA", "I;16", "LA"), "JPEG": ("L", "RGB", "CMYK"),
           "BMP": ("1", "L", "P", "RGB"), "TIFF": ("1", "L", "P", "RGB", "RGBA", "I;16", "I", "F",
                                                     "CMYK"), "GIF": ("L", "P")}


@st.composite
def encoded_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    shape = draw(st.sampled_from(["square", "celeba", "other"]))
    w = draw(st.integers(1, 48))
    w, h = {"square": (w, w), "celeba": (178, 218), "other": (w, draw(st.integers(1, 48)))}[shape]
    seed = draw(st.integers(0, 2**31 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(pixels[..., 0]).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip", "garbage"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    elif damage == "garbage":
        data = draw(st.binary(max_size=256))
    return data, damage, w == h or (w, h) == (178, 218)


@SETTINGS
@given(image=encoded_images(), size=st.sampled_from([8, 32, 112]))
def test_image_loader_decodes_or_refuses(scratch, image, size):
    """Intact square or CelebA-aligned images always load; anything else loads or is refused
    with the file named."""
    data, damage, aligned = image
    path = scratch / "image.bin"
    path.write_bytes(data)
    try:
        out = load_aligned(path, size)
    except BincamError as exc:
        assert str(path) in str(exc) and (damage != "none" or not aligned), str(exc)
        return
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


# --- ONNX metadata ----------------------------------------------------------------------------

def _good_metadata() -> dict[str, str]:
    from bincam.core.model_info import ModelInfo

    return ModelInfo(attributes=["A", "B", "C"], target_layer="layer4",
                     gradient_layout="dense", image_size=112,
                     positive_counts=[1, 2, 3], negative_counts=[3, 2, 1]).to_metadata()


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9)
                    | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def metadata(draw):
    props = _good_metadata()
    for key in draw(st.lists(st.sampled_from(sorted(props)), max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "json", "text"]))
        if action == "drop":
            props.pop(key)
        elif action == "json":
            props[key] = json.dumps(draw(JSON))
        else:
            props[key] = draw(st.text(max_size=20))
    return props


@SETTINGS
@given(props=metadata())
def test_onnx_metadata_reader_accepts_or_refuses(props):
    from bincam.core.model_info import ModelInfo

    try:
        info = ModelInfo.from_metadata(props, "m.onnx")
    except BincamError as exc:
        assert str(exc).startswith("m.onnx has ")
        return
    k = len(info.attributes)
    assert k >= 1 and all(isinstance(a, str) for a in info.attributes)
    assert len(set(info.attributes)) == k
    assert info.gradient_layout in ("dense", "factored")
    assert info.image_size is None or (isinstance(info.image_size, int) and info.image_size >= 8)
    assert len(info.mean) == 3 and len(info.std) == 3 and min(info.std) > 0
    for counts in (info.positive_counts, info.negative_counts):
        assert counts is None or (len(counts) == k and min(counts) >= 0)
    again = ModelInfo.from_metadata(info.to_metadata(), "again")  # (stamped with this version)
    assert again == dataclasses.replace(info, version=__version__)


def test_good_metadata_round_trips():
    from bincam.core.model_info import ModelInfo

    info = ModelInfo.from_metadata(_good_metadata(), "m.onnx")
    assert info.attributes == ["A", "B", "C"] and info.image_size == 112
