"""The fileset grouping rules, as data.

:mod:`omero_dropbox.grouping.grouper` interprets this table; it has no per-format code paths
except the named content parsers and probes (small readers for the files that list
their members: ``.nd``, ``.pattern``, companion OME-XML, ``.lei``, ``.xdce``, MIRAX
``Slidedat.ini``, the OME-XML inside an OME-TIFF, and two header probes).

Each :class:`Rule` says

* which Bio-Formats reader it stands for (``reader``; ``None`` for formats Bio-Formats
  does not read, grouped after the vendor's documentation),
* which file names are key files (``key``: name suffixes),
* how the members are found (:class:`Sibling` names built from the key's name,
  :class:`Content` names read from a file, :class:`Folder` a sibling directory listed
  on disk) and which members are required,
* which files are companions only (:class:`Companion`): never importable alone, they
  wait for their key file,
* how the key is chosen (``key_choice``): ``"self"``, or ``"first_member"`` when
  Bio-Formats reports the first data file rather than the index (MetaMorph).

Which files could still become a member (:func:`member_tokens`) follows from the same
table: the names :class:`Sibling` templates build, the :class:`Folder` and
:class:`Companion` suffixes, and the suffixes each :class:`Content` rule declares it
names (``names``). A lone file with one of them may yet be claimed when its key file
comes, so the engine does not import it early (``Fileset.may_grow``).

Rules are tried in order; the first rule whose ``key`` matches (and whose ``probe``
passes) decides. The behaviour each rule encodes was learnt from Bio-Formats 7.3.1 at
run time (``python -m omero_dropbox.grouping.oracle used-files ...``) and from reading the
public Bio-Formats sources; no code was copied.

Templates: ``{name}`` is the key's base name, ``{base}`` the name up to its last ``.``,
``{stem}`` the name without the matched suffix and ``{ext}`` that suffix as written
(without its leading ``.``). ``{ext:tr(c,d)}`` replaces the letter ``c`` with ``d``
keeping its case (``ics`` -> ``ids``, ``ICS`` -> ``IDS``), as Bio-Formats does.
Companion templates are evaluated from the companion's directory and may also use
``{dir1}``/``{dir2}`` (parent/grandparent directory name) and the ``:inner`` transform
(drop the first and last character, ``_x_`` -> ``x``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from omero_dropbox.grouping.templates import render

__all__ = [
    "COMPANION_SUFFIXES",
    "RULES",
    "Companion",
    "Content",
    "Folder",
    "Member",
    "Rule",
    "Sibling",
    "member_tokens",
]


@dataclass(frozen=True)
class Sibling:
    """Members named from the key, relative to the key's directory.

    ``templates`` are alternatives: the first one given (or present on disk) is the
    member. A required member that is absent is reported in ``Fileset.missing``; an
    optional one only when it exists on disk but was not (yet) given.
    """

    templates: tuple[str, ...]
    required: bool = True


@dataclass(frozen=True)
class Content:
    """Members listed inside a file (the key itself unless ``source`` is a template).

    ``names``: suffixes of the files such key files name. Any name can be written in a key
    file; these are the ones counted as "could still become a member" (see
    :func:`member_tokens`), so a lone file with one of them is not imported early.
    """

    parser: str
    required: bool = True
    source: str | None = None
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Folder:
    """Members found by listing a directory next to the key.

    ``glob`` is relative to the folder, ``/``-separated, one ``fnmatch`` pattern per level
    (dot files never match); ``suffixes``, if given, keep only names ending in one of them
    (case-insensitive). Listing uses lstat: a symbolic link is never followed (and in a
    user's tree is an escape that refuses the key file). Files listed on disk but not
    (yet) given are reported missing.
    """

    folder: str
    glob: str = "*"
    suffixes: tuple[str, ...] = ()
    required: bool = False


Member = Sibling | Content | Folder


@dataclass(frozen=True)
class Companion:
    """Files that belong to a key file and are never imported alone.

    ``suffix`` selects the files (case-insensitive; ``{stem}`` is the name without it);
    ``match``, if set, is a regular expression the whole base name must also match;
    ``keys`` are templates of the key file, relative to the companion's directory.
    Such a file waits for its key file.
    """

    suffix: str
    keys: tuple[str, ...]
    match: str | None = None


@dataclass(frozen=True)
class Rule:
    """One multi-file (or content-checked) format.

    ``key``: suffixes of key file names, with their leading ``.`` or ``_``; matched
    case-insensitively unless ``case_sensitive``. In templates ``{stem}`` is the name
    without the matched suffix and ``{ext}`` the suffix as written, without its first
    character (``.ICS`` -> ``ICS``). ``nested``: members that are key files of other
    rules bring their own members along (a pattern over ``.ics`` files takes the
    ``.ids`` files too).
    """

    format: str
    reader: str | None
    key: tuple[str, ...]
    members: tuple[Member, ...] = ()
    companions: tuple[Companion, ...] = ()
    probe: str | None = None
    case_sensitive: bool = False
    nested: bool = False
    key_choice: Literal["self", "first_member"] = "self"
    notes: str = ""
    verified: Literal["oracle", "documented"] = "oracle"


RULES: tuple[Rule, ...] = (
    Rule(
        format="File pattern",
        reader="loci.formats.in.FilePatternReader",
        key=(".pattern",),
        # A pattern may name any file; counted as members: image series (TIFF, STK) and the
        # text and XML metadata that travel with them.
        members=(Content("file_pattern", names=(".tif", ".tiff", ".stk", ".txt", ".xml")),),
        nested=True,
        notes="The .pattern file holds one Bio-Formats file pattern (<1-3>, <A-C>, <a,b>) "
        "relative to its directory, or a regular expression over the names there.",
    ),
    Rule(
        format="DeltaVision",
        reader="loci.formats.in.DeltavisionReader",
        key=("_D3D.dv",),
        case_sensitive=True,  # as in Bio-Formats
        members=(
            Sibling(("{stem}.dv.log",), required=False),
            Sibling(("{base}_log.txt",), required=False),
        ),
        notes="A deconvolved X_D3D.dv uses the log of its original, X.dv.log.",
    ),
    Rule(
        format="DeltaVision",
        reader="loci.formats.in.DeltavisionReader",
        key=(".dv", ".r3d", ".r3d_d3d", ".d3d"),
        members=(
            Sibling(("{name}.log", "{base}.log"), required=False),
            Sibling(("{base}_log.txt",), required=False),
        ),
        companions=(
            Companion(".dv.log", ("{stem}.dv",)),
            Companion(".r3d.log", ("{stem}.r3d",)),
            Companion("_log.txt", ("{stem}.dv",)),  # Bio-Formats claims any *_log.txt
        ),
    ),
    Rule(
        format="MetaMorph ND",
        reader="loci.formats.in.MetamorphReader",
        key=(".nd", ".scan"),
        members=(Content("metamorph_nd", names=(".stk", ".tif")),),
        key_choice="first_member",
        notes="Stage files are named from the .nd content (_w<n><wave>, _s<n>, _t<n>) with "
        ".STK, .TIF, .tif or .stk. Bio-Formats reports the first stage file as the key.",
    ),
    Rule(
        format="OME-TIFF companion",
        reader="loci.formats.in.OMETiffReader",
        key=(".companion.ome",),
        members=(Content("ome_companion", names=(".tif", ".tiff", ".tf2", ".tf8", ".btf")),),
    ),
    Rule(
        format="OME-TIFF",
        reader="loci.formats.in.OMETiffReader",
        key=(".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf"),
        members=(Content("ome_tiff", names=(".tif", ".tiff", ".tf2", ".tf8", ".btf")),),
        notes="Multi-file OME-TIFF: the OME-XML in the first IFD names the other files. "
        "A BinaryOnly OME-TIFF belongs to its companion and waits for it.",
    ),
    Rule(
        format="Leica LEI",
        reader="loci.formats.in.LeicaReader",
        key=(".lei",),
        members=(Content("leica_lei", names=(".tif", ".tiff")),),
    ),
    Rule(
        format="Olympus VSI",
        reader="loci.formats.in.CellSensReader",
        key=(".vsi",),
        members=(Folder("_{stem}_", "*/*", suffixes=(".ets",)),),
        companions=(Companion(".ets", ("../../{dir2:inner}.vsi",)),),
        notes="Pixel data lives in _<name>_/stack*/*.ets next to the .vsi.",
        verified="documented",
    ),
    Rule(
        format="MIRAX",
        reader=None,
        key=(".mrxs",),
        members=(
            Sibling(("{stem}/Slidedat.ini",), required=True),
            Content("mirax_slidedat", source="{stem}/Slidedat.ini", names=(".dat",)),
            Folder("{stem}", "*"),
        ),
        companions=(
            Companion(".ini", ("../{dir1}.mrxs",), match=r"(?i)slidedat\.ini"),
            Companion(".dat", ("../{dir1}.mrxs",), match=r"(?i)index\.dat|data\d+\.dat"),
        ),
        notes="Not read by Bio-Formats 7.3.1 (OpenSlide format): a .mrxs and a folder of the "
        "same name holding Slidedat.ini, the index file and the Data*.dat files it lists.",
        verified="documented",
    ),
    Rule(
        format="InCell",
        reader="loci.formats.in.InCellReader",
        key=(".xdce",),
        members=(Content("incell_xdce", names=(".tif", ".tiff")),),
        notes="Plate index: every <Image filename=...> (and its thumbnail, if present).",
    ),
    Rule(
        format="Unisoku STM",
        reader="loci.formats.in.UnisokuReader",
        key=(".hdr",),
        probe="unisoku_header",
        members=(Sibling(("{stem}.DAT",)),),
        notes="A .HDR/.hdr starting with ':STM data'; the pixels are <stem>.DAT, upper case "
        "whatever the header's case (a lower-case .dat is not used).",
    ),
    Rule(
        format="NIfTI",
        reader="loci.formats.in.NiftiReader",
        key=(".hdr",),
        probe="nifti_header",
        members=(Sibling(("{stem}.img",)),),
    ),
    Rule(
        format="Analyze",
        reader="loci.formats.in.AnalyzeReader",
        key=(".hdr",),
        members=(Sibling(("{stem}.img",)),),
        companions=(Companion(".img", ("{stem}.hdr",)),),
        notes="Bio-Formats looks for the lower-case .img/.hdr partner only.",
    ),
    Rule(
        format="NRRD",
        reader="loci.formats.in.NRRDReader",
        key=(".nhdr", ".nrrd"),
        members=(Content("nrrd_header", names=(".raw",)),),
        notes="The header's 'data file:' (or 'datafile:') names the pixel file; Bio-Formats "
        "drops the value's text up to its first '/' and resolves the rest from the header's "
        "folder. A .nrrd may name one too. Given the data file, Bio-Formats opens "
        "<data>.nhdr or <base>.nhdr, which sorts first in a folder.",
    ),
    Rule(
        format="Simulated data",
        reader="loci.formats.in.FakeReader",
        key=(".fake",),
        members=(Sibling(("{name}.ini",), required=False),),
        companions=(Companion(".fake.ini", ("{stem}.fake",)),),
        notes="<name>.fake.ini holds the settings of <name>.fake.",
    ),
    Rule(
        format="IMAGIC",
        reader="loci.formats.in.ImagicReader",
        key=(".hed",),
        members=(Sibling(("{stem}.img",)),),
        notes="Headers in <stem>.hed, pixels in <stem>.img (lower case).",
    ),
    Rule(
        format="Fuji LAS 3000",
        reader="loci.formats.in.FujiReader",
        key=(".img",),
        probe="fuji_inf",
        members=(Sibling(("{base}.inf",)),),
        notes="An .img with a <stem>.inf beside it; Bio-Formats reports the file it was "
        "given first, and the OMERO importer gives it the .img (it sorts first).",
    ),
    Rule(
        format="PCO-RAW",
        reader="loci.formats.in.PCORAWReader",
        key=(".pcoraw",),
        members=(Sibling(("{stem}.rec",), required=False),),
        notes="The settings are in <stem>.rec, used when present; a .rec alone is an MRC "
        "or PerkinElmer file, so it never waits.",
    ),
    Rule(
        format="ICS",
        reader="loci.formats.in.ICSReader",
        key=(".ics",),
        probe="ics_v2",
        notes="ICS 2.0 keeps the pixels inside the .ics; a stray .ids is not used.",
    ),
    Rule(
        format="ICS",
        reader="loci.formats.in.ICSReader",
        key=(".ics",),
        members=(Sibling(("{stem}.{ext:tr(c,d)}",)),),
        companions=(Companion(".ids", ("{stem}.{ext:tr(d,c)}",)),),
    ),
)

#: Suffixes Bio-Formats readers declare for metadata or companion files of multi-file
#: datasets, never opened alone (each reader's ``datasetDescription`` names the key file).
#: Unclaimed files with these suffixes are reported instead of imported as "single".
COMPANION_SUFFIXES: dict[str, str] = {
    "xlog": "InCell (.xdce)",
    "log": "DeltaVision (.dv) or CellWorx (.htd)",
    "tnb": "Olympus APL (.apl)",
    "mtb": "Olympus APL (.apl)",
    "pty": "Olympus FV1000 (.oif)",
    "lut": "Olympus FV1000 (.oif)",
    "mea": "Evotec Flex (.flex)",
    "res": "Evotec Flex (.flex)",
    "aisf": "Volocity (.mvd2)",
    "aiix": "Volocity (.mvd2)",
    "atsf": "Volocity (.mvd2)",
    "set": "SPC FIFO (.spc)",
    "mdb": "Zeiss LSM (.lsm)",
    "env": "Prairie (.xml)",
    "ano": "PerkinElmer (.htm)",
    "tim": "PerkinElmer (.htm)",
    "zpo": "PerkinElmer (.htm)",
    "pst": "TillVision (.vws)",
    "inf": "Fuji LAS 3000 (.img) or TillVision (.vws)",
    "par": "JEOL (.dat)",
}


def member_tokens(rules: Iterable[Rule]) -> frozenset[str]:
    """Last name tokens (lower case, no dot: ``"tif"``) of the files ``rules`` can make a
    member of a fileset: what :class:`Sibling` templates build from each key suffix,
    :class:`Folder` and :class:`Companion` suffixes, and :class:`Content` ``names``.

    By the last token, as the grouper indexes suffixes: ``{base}_log.txt`` counts every
    ``.txt`` (conservative: a longer wait, never an early import). A :class:`Folder`
    without suffixes (MIRAX's data folder) adds nothing; the rule's companions name what
    such a folder holds.
    """
    suffixes: set[str] = set()
    for rule in rules:
        for spec in rule.members:
            if isinstance(spec, Sibling):
                for key in rule.key:
                    name = "x" + key  # any stem: only the end of the name matters
                    values = {"name": name, "base": name[: name.rfind(".")], "stem": "x", "ext": key[1:]}
                    suffixes.update(render(t, values).rsplit("/", 1)[-1] for t in spec.templates)
            elif isinstance(spec, Folder):
                suffixes.update(spec.suffixes)
            else:
                suffixes.update(spec.names)
        suffixes.update(c.suffix for c in rule.companions)
    return frozenset(s[s.rfind(".") + 1 :].lower() for s in suffixes if "." in s)
