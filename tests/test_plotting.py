"""The PNGs: no software-version metadata, so the same data gives the same bytes whatever
matplotlib or libpng version drew them."""

import struct

import matplotlib
import matplotlib.pyplot as plt

from torchreg.plotting import save


def text_chunks(png: bytes) -> dict[bytes, bytes]:
    """The PNG's text chunks (tEXt, iTXt, zTXt): keyword -> the rest of the chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = {}, 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            keyword, _, rest = data.partition(b"\0")
            found[keyword] = rest
        at += 12 + length
    return found


def test_pngs_carry_no_software_version(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save(fig, tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    assert b"Software" not in text_chunks(png)
    assert matplotlib.__version__.encode() not in png
