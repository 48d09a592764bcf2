"""The ranker's photos: folders and tars through geoloc.images, bad photos refused with their uri."""

import pickle
import tarfile

import numpy as np
import pytest

from geoloc.rank.dryrun import random_photo
from geoloc.rank.photos import StorePhotos


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos" / "ba" / "08"
    folder.mkdir(parents=True)
    random_photo(rng, 40).save(folder / "1.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with tarfile.open(tmp_path / "mp16.tar", "w") as archive:
        archive.add(tmp_path / "photos" / "ba", arcname="mp16/ba")
    return tmp_path


def test_folder_and_tar_give_the_same_pixels(photos):
    from_folder = StorePhotos(photos / "photos")("ba/08/1.jpg")
    from_tar = StorePhotos(photos / "mp16.tar")("ba/08/1.jpg")
    assert from_folder.mode == "RGB" and from_folder.size == (40, 40)
    assert np.array_equal(np.asarray(from_folder), np.asarray(from_tar))
    assert np.array_equal(np.asarray(StorePhotos(photos / "mp16.tar")("mp16/ba/08/1.jpg")), np.asarray(from_tar))


def test_a_tar_index_is_written_once_and_a_published_pickle_reads_safely(photos):
    index = photos / "mp16.index.parquet"
    StorePhotos(photos / "mp16.tar", index)
    assert index.exists()
    assert StorePhotos(photos / "mp16.tar", index)("ba/08/1.jpg").size == (40, 40)
    with tarfile.open(photos / "mp16.tar") as archive:
        published = {info.name: info for info in archive.getmembers()}
    (photos / "tar_index.pkl").write_bytes(pickle.dumps(published))
    assert StorePhotos(photos / "mp16.tar", photos / "tar_index.pkl")("ba/08/1.jpg").size == (40, 40)


def test_unreadable_missing_and_escaping_photos_are_value_errors_naming_the_uri(photos):
    folder, archive = StorePhotos(photos / "photos"), StorePhotos(photos / "mp16.tar")
    for store, uri in [(folder, "ba/08/broken.jpg"), (archive, "ba/08/broken.jpg"), (archive, "ba/08/2.jpg"),
                       (folder, "ba/08/2.jpg"), (folder, "../mp16.tar")]:
        with pytest.raises(ValueError, match=uri.replace(".", r"\.")):
            store(uri)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        StorePhotos(photos / "nowhere")


def test_georanker_preparation_sizes_by_28_and_reencodes_gallery_photos_as_pillow_jpeg(tmp_path):
    import io

    from PIL import Image

    from geoloc.rank.photos import GEORANKER_GALLERY, GEORANKER_QUERY, prepare_photo

    rng = np.random.default_rng(5)
    encoded = io.BytesIO()
    random_photo(rng, (61, 100)).save(encoded, format="PNG")
    query = prepare_photo(encoded.getvalue(), GEORANKER_QUERY)
    assert query.mode == "RGB" and query.size == (112, 56)  # each side the nearest multiple of 28
    gallery = prepare_photo(encoded.getvalue(), GEORANKER_GALLERY)
    assert gallery.size == (112, 56)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(encoded.getvalue())).save(jpeg, format="JPEG")  # Pillow's defaults: quality 75
    expected = Image.open(jpeg).convert("RGB").resize((112, 56))
    assert np.array_equal(np.asarray(gallery), np.asarray(expected))
    assert not np.array_equal(np.asarray(gallery), np.asarray(query))
    transparent = io.BytesIO()
    random_photo(rng, 56).convert("RGBA").save(transparent, format="PNG")  # not writable as JPEG: made RGB first
    assert prepare_photo(transparent.getvalue(), GEORANKER_GALLERY).size == (56, 56)
