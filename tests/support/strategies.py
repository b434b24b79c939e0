"""Hypothesis strategies shared by the fuzzers: property values, and names for the grouper."""

from __future__ import annotations

import os
import random

from hypothesis import strategies as st

from omero_dropbox.grouping.rules import COMPANION_SUFFIXES, RULES

# Tokens that steer values into every parser branch, mixed with arbitrary text.
TOKENS = [
    "", " ", "default", "amy", "Creation", "creatoin", "All", "Deletion", "Follow", "flat",
    "true", "F", "yes", "maybe", "0", "1", "-1", "60", "60.5", ".5", "1e400", "nan", "inf",
    "/x", "/x/", "'", '"', "\\", "--a 'b c'", "auto", "poll", "${ROUTERPORT}", "\x00",
    "\udcff", "é", "1_0", "٣",
]  # fmt: skip
token = st.one_of(st.sampled_from(TOKENS), st.text(max_size=8))
element = st.lists(token, max_size=4).map(",".join)
value = st.lists(element, max_size=4).map(";".join)

# Suffixes the rule table knows (keys, companions, member templates) plus ordinary ones.
SUFFIXES = sorted(
    {k for r in RULES for k in r.key}
    | {c.suffix for r in RULES for c in r.companions}
    | {f".{s}" for s in COMPANION_SUFFIXES}
    | {".ids", ".IDS", ".img", ".dv.log", ".log", "_log.txt", ".TIF", ".STK", ".tif", ".stk"}
    | {".png", ".czi", ".nii.gz", ".xyz", "", ".DS_Store", ".ome.tif", ".ICS", ".HDR"}
    | {".DAT", ".inf", ".rec", ".raw", ".fake.ini"}
)
STEMS = st.sampled_from(
    [
        *("a", "b", "exp", "exp_w1DAPI", "exp_w2GFP", "slide", "Slidedat", "Index", "Data0000"),
        *("s_1", "s_2", "pat_z1", "multi_0", "g", "g_D3D", ".hidden", "caf\udce9", "Thumbs"),
    ]
)
DIRS = st.sampled_from(["", "a", "a/b", "_slide_/stack1", "slide", "exp", "sub dir"])


def index_content(name: str, rnd: random.Random, names: list[str]) -> bytes:
    """Plausible content for index files, so content parsers have something to chew on."""
    low = name.lower()
    pick = [os.path.basename(n) for n in rnd.sample(names, min(3, len(names)))]
    if low.endswith(".pattern"):
        return rnd.choice([f"{pick[0]}", "s_<1-2>.tif", "pat_z<1-3>.tif", r"s_.*\.ics", "<"]).encode(
            "utf-8", "surrogateescape"
        )
    if low.endswith(".nd"):
        return b'"DoWave", TRUE\r\n"NWavelengths", 2\r\n"WaveName1", "DAPI"\r\n"EndFile"\r\n'
    if low.endswith((".companion.ome", ".xdce")):
        refs = "".join(f'<UUID FileName="{p}"/><Image filename="{p}"/>' for p in pick)
        return f"<OME>{refs}</OME>".encode("utf-8", "surrogateescape")
    if low.endswith((".nhdr", ".nrrd")):
        where = rnd.choice(["", "./", "../", "/"])
        return f"NRRD0004\nencoding: raw\ndata file: {where}{pick[0]}\n\n".encode("utf-8", "surrogateescape")
    if low.endswith(".hdr") and rnd.random() < 0.3:
        return b":STM data\r"
    if low.endswith(".ini"):
        return f"[DATAFILE]\nFILE_0 = {pick[0]}\n".encode("utf-8", "surrogateescape")
    return b""


@st.composite
def name_soups(draw: st.DrawFn) -> list[tuple[str, int]]:
    entries = draw(st.lists(st.tuples(DIRS, STEMS, st.sampled_from(SUFFIXES)), min_size=1, max_size=25))
    seed = draw(st.integers(0, 2**16))
    return [(os.path.join(d, s + x), seed) for d, s, x in entries]
