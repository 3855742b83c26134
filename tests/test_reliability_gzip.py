"""A corrupted ``.nii.gz`` is refused, never loaded with altered voxels.

nibabel reads only the bytes the header asks for, so it never reaches the gzip
trailer (CRC32 and length) and a flipped bit inside the deflate stream can give
different voxels without any error. The expected voxels here come from the
uncorrupted file read by nibabel directly; multi-member files are built with
``gzip.compress`` of two halves of the raw NIfTI bytes (what ``cat a.gz b.gz`` makes).
"""

from __future__ import annotations

import gzip
import time
import zlib

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.io import load_volume

SHAPE = (12, 10, 8)


def _raw_nifti() -> bytes:
    data = np.random.default_rng(1).normal(0, 100, SHAPE).astype(np.float32)
    return nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])).to_bytes()


def _expected(raw: bytes, tmp_path) -> np.ndarray:
    plain = tmp_path / "plain.nii"
    plain.write_bytes(raw)
    return load_volume(plain).data


def _deflate_span(gz: bytes) -> tuple[int, int]:
    """(start, stop) of the compressed data of a one-member gzip file written without a file name."""
    assert gz[3] == 0  # no optional header fields: the header is the fixed 10 bytes
    return 10, len(gz) - 8


def test_twenty_bit_flips_are_refused_or_harmless(tmp_path):
    raw = _raw_nifti()
    expected = _expected(raw, tmp_path)
    gz = gzip.compress(raw, mtime=0)
    start, stop = _deflate_span(gz)
    rng = np.random.default_rng(2024)
    outcomes = []
    for i in range(20):
        byte, bit = int(rng.integers(start, stop)), int(rng.integers(0, 8))
        bad = bytearray(gz)
        bad[byte] ^= 1 << bit
        path = tmp_path / f"flip{i}.nii.gz"
        path.write_bytes(bytes(bad))
        try:
            vol = load_volume(path)
        except ValueError as exc:
            assert str(path) in str(exc)
            outcomes.append("refused")
            continue
        np.testing.assert_array_equal(vol.data, expected, err_msg=f"flip of bit {bit} of byte {byte}")
        outcomes.append("same")
    assert "refused" in outcomes  # the flips do reach the voxels


def test_crc_error_names_the_file_and_the_cause(tmp_path):
    raw = _raw_nifti()
    gz = bytearray(gzip.compress(raw, mtime=0))
    gz[-8] ^= 0x01  # the stored CRC32: the data itself is intact
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(bytes(gz))
    with pytest.raises(ValueError) as info:
        load_volume(path)
    message = str(info.value)
    assert message.startswith(f"{path} is a corrupted gzip file (")
    assert "incorrect data check" in message


def test_two_member_gzip_loads_like_the_plain_file(tmp_path):
    raw = _raw_nifti()
    cut = len(raw) // 3
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0))
    assert gzip.decompress(path.read_bytes()) == raw  # what `gzip -t` / `zcat` accept
    np.testing.assert_array_equal(load_volume(path).data, _expected(raw, tmp_path))


def test_corrupt_second_member_is_refused(tmp_path):
    raw = _raw_nifti()
    cut = len(raw) // 3
    second = bytearray(gzip.compress(raw[cut:], mtime=0))
    second[-3] ^= 0x10  # the second member's stored length
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(raw[:cut], mtime=0) + bytes(second))
    with pytest.raises(ValueError, match="corrupted gzip file"):
        load_volume(path)


@pytest.mark.parametrize("tail, accepted", [(b"", True), (b"\0" * 512, True), (b"junk after the end", False)],
                         ids=["clean end", "zero padding", "garbage"])
def test_what_may_follow_the_last_member(tmp_path, tail, accepted):
    """As Python's gzip module: zero padding is ignored, anything else is not gzip."""
    raw = _raw_nifti()
    path = tmp_path / "t.nii.gz"
    path.write_bytes(gzip.compress(raw, mtime=0) + tail)
    if accepted:
        np.testing.assert_array_equal(load_volume(path).data, _expected(raw, tmp_path))
        return
    with pytest.raises(ValueError, match="corrupted gzip file"):
        load_volume(path)


def test_truncated_gzip_says_truncated(tmp_path):
    gz = gzip.compress(_raw_nifti(), mtime=0)
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gz[: len(gz) - 20])  # the deflate stream and trailer cut short
    with pytest.raises(ValueError) as info:
        load_volume(path)
    assert "corrupted gzip file" in str(info.value) and "truncated" in str(info.value)


def test_check_is_streaming_and_fast(tmp_path):
    """A gzip of about 100 MB is verified in a few seconds here (about one on a quiet machine)."""
    from napari_xaiclip.io import verify_gzip

    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()  # incompressible: ~1 MB per MB
    path = tmp_path / "big.gz"
    comp = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(path, "wb") as fh:
        for _ in range(100):
            fh.write(comp.compress(block))
        fh.write(comp.flush())
    t0 = time.perf_counter()
    assert verify_gzip(path) == 100 << 20
    assert time.perf_counter() - t0 < 10
