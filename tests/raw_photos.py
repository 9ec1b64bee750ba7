"""Camera RAW files made in the test: DNGs written with tifffile (a Bayer mosaic in the raw IFD, optionally an
embedded RGB preview in IFD0, as cameras and converters write them), read back through LibRaw."""

from __future__ import annotations

import numpy as np


def scene(h: int, w: int) -> np.ndarray:
    """A float RGB scene in 0..1: the left half red, the right half blue, the lower half with some green."""
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[:, : w // 2, 0] = 1.0
    rgb[:, w // 2:, 2] = 1.0
    rgb[h // 2:, :, 1] = 0.5
    return rgb


def write_dng(path, size=(384, 256), preview: np.ndarray | None = None, orientation: int = 1,
              taken: str | None = "2021:06:05 14:03:02") -> str:
    """A DNG of `scene` at size (width, height) as an RGGB mosaic, 12 bits, black level 64. preview: an RGB
    uint8 array stored as the file's preview (IFD0, the raw in its SubIFD). orientation: the TIFF/EXIF
    orientation of IFD0 (6: turned a quarter clockwise to view)."""
    import tifffile

    w, h = size
    rgb = scene(h, w)
    cfa = np.zeros((h, w), np.float32)
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    cfa = (cfa * 3900 + 64).astype(np.uint16)

    def rational(values):
        out = []
        for v in values:
            out += [int(round(v * 10000)), 10000]
        return out

    main = [(50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
            (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
            (50708, "s", 0, "picsift test camera", True),  # UniqueCameraModel
            (271, "s", 0, "picsift", True), (272, "s", 0, "test camera", True),
            (274, "H", 1, (orientation,), True),
            (50721, "2i", 9, rational([1, 0, 0, 0, 1, 0, 0, 0, 1]), True),  # ColorMatrix1
            (50778, "H", 1, (21,), True)]  # CalibrationIlluminant1: D65
    if taken:
        main.append((306, "s", 0, taken, True))  # DateTime
    raw = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),  # CFA repeat, pattern RGGB
           (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
           (50714, "H", 1, (64,), True), (50717, "H", 1, (4095,), True)]  # BlackLevel, WhiteLevel
    with tifffile.TiffWriter(str(path)) as tif:
        if preview is not None:
            tif.write(np.ascontiguousarray(preview, np.uint8), photometric="rgb", subfiletype=1, subifds=1,
                      extratags=main)
            tif.write(cfa, photometric=32803, subfiletype=0, extratags=raw)
        else:
            tif.write(cfa, photometric=32803, subfiletype=0, extratags=main + raw)
    return str(path)


def green_preview(w: int, h: int) -> np.ndarray:
    """A preview unlike the scene (all green, a white top-left quarter) to tell which pixels were used."""
    p = np.zeros((h, w, 3), np.uint8)
    p[..., 1] = 200
    p[: h // 2, : w // 2] = 255
    return p
