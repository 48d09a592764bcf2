"""The shared modules below the stages: one copy of each rule, tested here once."""

import io

import pytest
from PIL import Image

from geoloc.candidates.zeroshot import default_cache_path
from geoloc.images.decoding import UNREADABLE, decode_photo, open_photo, unreadable_reason
from geoloc.images.jpeg import (
    END_OF_IMAGE,
    START_OF_FRAME,
    START_OF_SCAN,
    JpegStructureError,
    frame_pixels,
    header_segments,
    image_segments,
)
from geoloc.progress import progress_bar, progress_callback
from geoloc.tables import replace_durably, replace_folder_durably
from geoloc.user_cache import user_cache_folder


def test_progress_goes_to_stderr_and_leaves_stdout_clean(capsys):
    with progress_bar(transient=False) as bar:
        task = bar.add_task("embedding", total=3)
        bar.advance(task, 3)
    with progress_callback("scoring") as progress:
        progress(2, 2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "embedding" in captured.err and "3/3" in captured.err


def jpeg_bytes(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_decode_photo_gives_rgb_pixels_of_any_mode():
    image = decode_photo(jpeg_bytes(mode="L"))
    assert image.mode == "RGB" and image.size == (8, 6)


@pytest.mark.parametrize("data", [b"not a photo", jpeg_bytes()[:40], b""])
def test_unreadable_bytes_raise_one_of_unreadable_with_a_stable_reason(data):
    with pytest.raises(UNREADABLE) as first:
        decode_photo(data)
    with pytest.raises(UNREADABLE) as second:
        decode_photo(data)
    assert unreadable_reason(first.value) == unreadable_reason(second.value)
    assert "0x" not in unreadable_reason(first.value)


def test_max_pixels_refuses_a_photo_from_its_header():
    with pytest.raises(UNREADABLE, match="48 pixels; the limit is 47"):
        open_photo(jpeg_bytes(), max_pixels=47)
    assert open_photo(jpeg_bytes(), max_pixels=48).size == (8, 6)


def test_the_user_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_folder() == tmp_path / "geoloc"
    assert default_cache_path() == tmp_path / "geoloc" / "zeroshot.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_folder() == tmp_path / "home" / ".cache" / "geoloc"


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "index"
    replace_folder_durably(folder, lambda partial: (partial / "a.txt").write_text("first"))
    assert (folder / "a.txt").read_text() == "first"

    def half_written(partial):
        (partial / "a.txt").write_text("second")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        replace_folder_durably(folder, half_written)
    assert (folder / "a.txt").read_text() == "first"
    replace_folder_durably(folder, lambda partial: (partial / "b.txt").write_text("third"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index"]
    assert sorted(path.name for path in folder.iterdir()) == ["b.txt"]


def test_a_failed_durable_write_leaves_the_old_file_and_no_part(tmp_path):
    path = tmp_path / "out.safetensors"
    replace_durably(path, lambda temporary: temporary.write_bytes(b"old"))

    def failing(temporary):
        temporary.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_durably(path, failing)
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]


def test_the_jpeg_walker_names_every_segment_up_to_the_scan():
    data = jpeg_bytes()
    segments = list(header_segments(data))
    markers = [marker for marker, _, _ in segments]
    assert markers[0] == 0xE0 and markers[-1] == START_OF_SCAN and any(m in START_OF_FRAME for m in markers)
    assert [start for _, start, _ in segments[1:]] == [end for _, _, end in segments[:-1]]
    assert segments[-1][2] == len(data)
    frame = next(start for marker, start, _ in segments if marker in START_OF_FRAME)
    assert frame_pixels(data, frame) == 48


def test_the_jpeg_walker_skips_fill_bytes_and_steps_over_standalone_markers():
    data = jpeg_bytes()
    padded = data[:2] + b"\xff\xff\xd0" + data[2:]
    assert [m for m, _, _ in header_segments(padded)][0] == 0xD0
    assert [m for m, _, _ in header_segments(padded)][1:] == [m for m, _, _ in header_segments(data)]


def test_the_whole_image_walk_goes_through_every_scan_and_stops_at_the_end_of_image():
    buffer = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    segments = list(image_segments(data + b"\xff\xd8 a second image after the first one's end"))
    markers = [marker for marker, _, _ in segments]
    assert markers.count(START_OF_SCAN) > 1 and markers[-1] == END_OF_IMAGE
    assert [start for _, start, _ in segments[1:]] == [end for _, _, end in segments[:-1]]
    assert segments[-1][2] == len(data)
    with pytest.raises(JpegStructureError, match="no end-of-image marker"):
        list(image_segments(data[:-2]))


@pytest.mark.parametrize(("cut", "message"), [
    (lambda data: b"\x89PNG" + data, "no start-of-image"),
    (lambda data: data[:2] + b"\x00" + data[2:], "no segment marker at byte 2"),
    (lambda data: data[:3], "no image data"),
    (lambda data: data[:5], "truncated segment header"),
    (lambda data: data[:10], "runs past the end"),
    (lambda data: data[:4] + b"\x00\x01" + data[6:], "runs past the end"),
])
def test_the_jpeg_walker_names_where_the_structure_breaks(cut, message):
    with pytest.raises(JpegStructureError, match=message):
        list(header_segments(cut(jpeg_bytes())))
