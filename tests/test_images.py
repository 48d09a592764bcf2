"""geoloc.images on real files: EXIF GPS in every encoding and format, shards, tar, the restricted unpickler."""

import io
import pickle
import tarfile

import msgpack
import pytest
from datawriters import Rational, gps_block, image_bytes, photo, write_shard, write_tar
from PIL import ExifTags, Image

from geoloc.images import (
    CORRUPT_IMAGE,
    ArchiveError,
    ImageStore,
    OutsideRootError,
    content_hash,
    index_shard,
    index_tar,
    load_tar_index_pickle,
    read_header,
)

EIFFEL = (48.858370, 2.294481)
SYDNEY = (-33.856784, 151.215297)
USHUAIA_WEST = (-54.801912, -68.302951)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "HEIF"])
@pytest.mark.parametrize("encoding", ["dms", "degrees", "decimal_minutes"])
@pytest.mark.parametrize("place", [EIFFEL, SYDNEY, USHUAIA_WEST])
def test_gps_read_in_every_encoding_format_and_hemisphere(fmt, encoding, place):
    header = read_header(photo(*place, encoding=encoding, fmt=fmt))
    assert header.problem is None
    assert header.lat == pytest.approx(place[0], abs=1e-6)
    assert header.lon == pytest.approx(place[1], abs=1e-6)


def test_gps_from_a_file_path(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(photo(*EIFFEL))
    assert read_header(path).lat == pytest.approx(EIFFEL[0], abs=1e-6)


def test_header_is_read_without_decoding_pixels():
    # A JPEG whose pixel data is garbage still gives its GPS: only the header is parsed.
    data = bytearray(photo(*SYDNEY))
    start_of_scan = data.index(b"\xff\xda")
    data[start_of_scan + 20:] = b"\x00" * (len(data) - start_of_scan - 20)
    assert read_header(bytes(data)).lat == pytest.approx(SYDNEY[0], abs=1e-6)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({ExifTags.GPS.GPSLatitude: (Rational(48, 0), Rational(51, 1), Rational(30, 1))}, "zero_denominator"),
        ({ExifTags.GPS.GPSLatitudeRef: "Q"}, "bad_reference"),
        ({ExifTags.GPS.GPSLongitudeRef: None}, "bad_reference"),
        ({ExifTags.GPS.GPSLongitude: None}, "no_gps"),
    ],
)
def test_unusable_gps_is_named(change, problem):
    gps = gps_block(*EIFFEL)
    for tag, value in change.items():
        if value is None:
            del gps[tag]
        else:
            gps[tag] = value
    header = read_header(image_bytes(gps))
    assert (header.format, header.lat, header.problem) == ("JPEG", None, problem)


def test_no_exif_no_gps_and_corrupt_exif():
    assert read_header(image_bytes(None)).problem == "no_gps"
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, "JPEG")
    assert read_header(plain.getvalue()).problem == "no_exif"
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert read_header(png.getvalue()).problem == "no_exif"
    data = photo(*EIFFEL)
    exif_at = data.index(b"Exif\x00\x00") + 6
    broken = data[:exif_at] + b"XX\x2a\x00\xff\xff\xff\x7f" + data[exif_at + 8:]
    assert read_header(broken).problem == "corrupt_exif"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_gps_pointer_to_nowhere_is_corrupt_exif():
    data = photo(*EIFFEL)
    entry = b"\x88\x25\x00\x04\x00\x00\x00\x01"  # big-endian IFD0 entry: GPSInfo, LONG, count 1
    at = data.index(entry) + len(entry)
    broken = data[:at] + b"\x7f\xff\xff\xff" + data[at + 4:]
    assert read_header(broken).problem == "corrupt_exif"


def test_corrupt_and_truncated_images():
    assert read_header(b"this is not an image").problem == CORRUPT_IMAGE
    assert read_header(photo(*EIFFEL)[:200]).problem == CORRUPT_IMAGE


def test_decompression_bomb_guard_stays_on(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    header = read_header(image_bytes(gps_block(*EIFFEL), size=(64, 64)))
    assert header.problem == CORRUPT_IMAGE and "decompression bomb" in header.detail


def test_shard_index_reads_every_record_in_place(tmp_path):
    records = [{"id": f"ba/08/{n}.jpg", "image": photo(*EIFFEL, seed=n)} for n in range(5)]
    write_shard(tmp_path / "shard_0.msg", records)
    index = index_shard(tmp_path / "shard_0.msg")
    assert index["member"].to_list() == [r["id"] for r in records]
    assert index["problem"].null_count() == len(records)
    assert index["content_hash"].to_list() == [content_hash(r["image"]) for r in records]
    store = ImageStore(tmp_path, index)
    for record in records:
        assert store.read_bytes(f"shard_0.msg#{record['id']}") == record["image"]


def test_truncated_last_record_loses_that_record_only(tmp_path):
    records = [{"id": f"{n}.jpg", "image": photo(*EIFFEL, seed=n)} for n in range(3)]
    write_shard(tmp_path / "shard_0.msg", records, truncate_last=10)
    index = index_shard(tmp_path / "shard_0.msg")
    good = index.filter(index["problem"].is_null())
    assert good["member"].to_list() == ["0.jpg", "1.jpg"]
    (bad,) = index.filter(index["problem"].is_not_null()).iter_rows(named=True)
    assert bad["problem"] == CORRUPT_IMAGE and "truncated" in bad["detail"]


def test_records_that_are_not_images_or_not_maps(tmp_path):
    path = tmp_path / "shard_0.msg"
    first = msgpack.packb({"id": "a.jpg", "image": b"nope"})
    path.write_bytes(first + msgpack.packb([1, 2]) + msgpack.packb({"id": "b.jpg", "image": photo(*EIFFEL)}))
    index = index_shard(path)
    expected = [("a.jpg", CORRUPT_IMAGE), (f"@{len(first)}", CORRUPT_IMAGE), ("b.jpg", None)]
    assert index.select("member", "problem").rows() == expected


def test_index_without_image_checks_finds_the_same_records(tmp_path):
    records = [{"id": f"{n}.jpg", "meta": {"n": [n, 1.5, None]}, "image": photo(*EIFFEL, seed=n)} for n in range(4)]
    write_shard(tmp_path / "shard_0.msg", records)
    checked = index_shard(tmp_path / "shard_0.msg")
    located = index_shard(tmp_path / "shard_0.msg", check_images=False)
    assert located.select("member", "offset", "length").equals(checked.select("member", "offset", "length"))
    assert located["content_hash"].null_count() == 4 and checked["content_hash"].null_count() == 0


def test_tar_index_by_scanning_and_reading(tmp_path):
    files = {f"mp16/ba/{n}.jpg": photo(*SYDNEY, seed=n) for n in range(4)}
    write_tar(tmp_path / "images.tar", files)
    index = index_tar(tmp_path / "images.tar")
    store = ImageStore(tmp_path, index)
    for name, data in files.items():
        assert store.read_bytes(f"images.tar#{name}") == data


def test_published_tar_index_pickle_is_read_with_tarinfo_only(tmp_path):
    files = {f"img/{n}.jpg": photo(*SYDNEY, seed=n) for n in range(3)}
    write_tar(tmp_path / "images.tar", files)
    with tarfile.open(tmp_path / "images.tar") as archive:
        published = {info.name: info for info in archive.getmembers()}
    (tmp_path / "tar_index.pkl").write_bytes(pickle.dumps(published))
    index = load_tar_index_pickle(tmp_path / "tar_index.pkl", "images.tar")
    store = ImageStore(tmp_path, index)
    assert all(store.read_bytes(f"images.tar#{name}") == data for name, data in files.items())


class _Exploit:
    def __reduce__(self):
        return (print, ("owned",))


def test_a_malicious_tar_index_pickle_is_refused(tmp_path, capsys):
    (tmp_path / "tar_index.pkl").write_bytes(pickle.dumps({"a.jpg": _Exploit()}))
    with pytest.raises(ArchiveError, match="builtins.print"):
        load_tar_index_pickle(tmp_path / "tar_index.pkl", "images.tar")
    assert "owned" not in capsys.readouterr().out


def test_store_reports_members_not_in_the_index(tmp_path):
    write_shard(tmp_path / "shard_0.msg", [{"id": "a.jpg", "image": photo(*EIFFEL)}])
    store = ImageStore(tmp_path, index_shard(tmp_path / "shard_0.msg"))
    with pytest.raises(ArchiveError, match="not in the index"):
        store.read_bytes("shard_0.msg#zzz.jpg")


@pytest.fixture
def dataset_root(tmp_path):
    """A root with a photo, a `#` in a plain file name, symlinks in and out, and a secret beside it."""
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(photo(*EIFFEL, seed=1))
    (root / "a#1.jpg").write_bytes(photo(*EIFFEL, seed=2))
    (tmp_path / "secret.jpg").write_bytes(photo(*SYDNEY, seed=3))
    (root / "inside.jpg").symlink_to(root / "img" / "a.jpg")
    (root / "linked").symlink_to(root / "img")
    (root / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "outdir").symlink_to(tmp_path)
    return root


@pytest.fixture(params=["opened file's real path", "realpath fallback"])
def dataset(request, dataset_root, monkeypatch):
    """The same root, checked by the opened file's real path or, where the OS cannot name it, by realpath."""
    if request.param == "realpath fallback":
        monkeypatch.setattr("geoloc.images.containment._opened_path", lambda descriptor: None)
    return dataset_root


@pytest.mark.parametrize("uri", ["../secret.jpg", "img/../../secret.jpg", "out.jpg", "outdir/secret.jpg"])
def test_uris_escaping_the_root_are_refused_with_their_name(dataset, uri):
    with pytest.raises(OutsideRootError, match=f"'{uri}'.* outside "):
        ImageStore(dataset).read_bytes(uri)


def test_a_scan_resolves_its_root_once_and_follows_no_path_component_by_component(dataset_root, monkeypatch):
    """Checking containment costs one look-up of the opened file, not a `realpath` walk per file."""
    import os.path

    from geoloc.catalog.scan import inspect_files

    dataset = dataset_root
    for n in range(20):
        (dataset / "img" / f"{n}.jpg").write_bytes(photo(*EIFFEL, seed=n))
    walked = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda path, **kw: walked.append(path) or realpath(path, **kw))
    scanned = inspect_files(str(dataset), [f"img/{n}.jpg" for n in range(20)] + ["out.jpg", "linked/a.jpg"], True)
    assert scanned["problem"].to_list()[:20] == [None] * 20
    assert scanned["problem"][20] == "outside_root" and scanned["problem"][21] is None
    assert len(walked) <= 1


def test_absolute_uris_are_refused_even_inside_the_root(dataset):
    for uri in ["/etc/passwd", str(dataset / "img" / "a.jpg")]:
        with pytest.raises(OutsideRootError, match="an absolute path"):
            ImageStore(dataset).read_bytes(uri)


def test_symlinks_inside_the_root_a_hash_in_a_file_name_and_members_beside_it(dataset):
    store = ImageStore(dataset)
    original = (dataset / "img" / "a.jpg").read_bytes()
    assert store.read_bytes("inside.jpg") == store.read_bytes("linked/a.jpg") == store.read_bytes("img/./a.jpg")
    assert store.read_bytes("inside.jpg") == original
    assert store.read_bytes("a#1.jpg") == photo(*EIFFEL, seed=2)
    write_shard(dataset / "shard_0.msg", [{"id": "x#2.jpg", "image": photo(*SYDNEY, seed=4)}])
    store = ImageStore(dataset, index_shard(dataset / "shard_0.msg"))
    assert store.read_bytes("shard_0.msg#x#2.jpg") == photo(*SYDNEY, seed=4)
    assert store.read_bytes("a#1.jpg") == photo(*EIFFEL, seed=2)
    with pytest.raises(OutsideRootError, match="'../secret.jpg'"):
        store.read_bytes("../secret.jpg")
