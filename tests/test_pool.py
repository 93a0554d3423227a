"""Pool, folder scan and manifests: formats, round trips, stable rows and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ml_backend.pool import (
    POOL_FILENAME,
    Pool,
    PoolItem,
    items_from_dicts,
    local_files_url,
    read_manifest,
    read_source,
    scan_folder,
)


def _img(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _img(root / "id_b" / "2.png")
    _img(root / "id_a" / "1.jpg")
    _img(root / "id_a" / "0.JPG")
    _img(root / "loose.webp")
    (root / "id_a" / "notes.txt").write_text("not an image")
    _img(root / ".hidden" / "x.png")
    _img(root / "id_b" / ".x.png")
    return root


def test_scan_folder_ids_identities_and_order(tree: Path) -> None:
    items = scan_folder(tree)
    assert [i.id for i in items] == ["id_a/0.JPG", "id_a/1.jpg", "id_b/2.png", "loose.webp"]
    assert [i.identity for i in items] == ["id_a", "id_a", "id_b", None]
    assert all(Path(i.path).is_absolute() and Path(i.path).is_file() for i in items)
    assert items[0].camera is None and items[0].url is None


def test_scan_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_text("x")
    with pytest.raises(NotADirectoryError, match="root"):
        scan_folder(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images"):
        scan_folder(tmp_path / "empty")


def test_read_csv_manifest_with_aliases_relative_paths_and_timestamps(tmp_path: Path) -> None:
    _img(tmp_path / "crops" / "a.png")
    _img(tmp_path / "crops" / "b.png")
    _img(tmp_path / "elsewhere" / "c.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,cam,timestamp,track,caption,label,url\n"
        "crops/a.png,c1,12.5,t1,a person in red,7,\n"
        f"{tmp_path / 'elsewhere' / 'c.png'},c2,2024-01-02T03:04:05Z,,,8,http://cdn/c.png\n"
        "\n"
        "crops/b.png,,2024-01-02T03:04:05,,,,\n"
    )
    items = read_manifest(manifest)
    assert [i.id for i in items] == ["crops/a.png", "elsewhere/c.png", "crops/b.png"]
    a, c, b = items
    assert (a.camera, a.timestamp, a.tracklet, a.text, a.identity, a.url) == (
        "c1",
        12.5,
        "t1",
        "a person in red",
        "7",
        None,
    )
    assert c.url == "http://cdn/c.png" and c.camera == "c2"
    assert c.timestamp == pytest.approx(1704164645.0)
    assert b.timestamp == c.timestamp  # a naive date-time is UTC, not the machine's zone
    assert b.camera is None and b.identity is None


def test_read_jsonl_manifest_with_explicit_ids(tmp_path: Path) -> None:
    _img(tmp_path / "x.png")
    _img(tmp_path / "y.png")
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"image": "x.png", "id": "cam1-0001", "camera": 1, "timestamp": 3, "extra": "ignored"},
        {"path": "y.png", "image_id": 42, "text": "y"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    x, y = read_manifest(manifest)
    assert (x.id, x.camera, x.timestamp) == ("cam1-0001", "1", 3.0)
    assert (y.id, y.text) == ("42", "y")


def test_text_is_a_caption_or_a_list_of_attributes(tmp_path: Path) -> None:
    for name in ("x.png", "y.png", "z.png", "w.png"):
        _img(tmp_path / name)
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"image": "x.png", "caption": "  man in a red coat "},
        {"image": "y.png", "attributes": ["male", " backpack ", "", 3]},
        {"image": "z.png", "text": []},
        {"image": "w.png", "text": "   "},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [i.text for i in read_manifest(manifest)] == ["man in a red coat", "male, backpack, 3", None, None]
    # the pool file keeps the joined text; an API payload's list is read the same way
    assert items_from_dicts([{"id": "a", "path": "/a", "text": ["hat", "scarf"]}])[0].text == "hat, scarf"


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"image": "ok.png", "text": {"colour": "red"}}, r"m\.jsonl:1: text must be a caption"),
        ({"image": "ok.png", "attributes": ["red", ["nested"]]}, r"m\.jsonl:1: text\[1\] must be a string"),
        ({"image": "ok.png", "caption": True}, r"m\.jsonl:1: text must be a caption"),
    ],
)
def test_bad_text_names_the_field(tmp_path: Path, row: dict[str, object], match: str) -> None:
    _img(tmp_path / "ok.png")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=match):
        read_manifest(path)


@pytest.mark.parametrize(
    ("name", "content", "exc", "match"),
    [
        ("m.csv", "camera\nc1\n", ValueError, r"m\.csv:2: missing required column 'image'"),
        ("m.csv", "image\nnope.png\n", FileNotFoundError, r"m\.csv:2: nope\.png"),
        ("m.csv", "image\nhttp://x/y.png\n", ValueError, "must be a local file path"),
        ("m.csv", "image,id\nok.png,a\nok.png,a\n", ValueError, "duplicate image id 'a'"),
        ("m.csv", "image,timestamp\nok.png,yesterday\n", ValueError, "timestamp 'yesterday'"),
        ("m.csv", "image,timestamp\nok.png,nan\n", ValueError, "timestamp must be finite"),
        ("m.csv", "image\nok.png,extra\n", ValueError, "more values than header columns"),
        ("m.csv", "image\n", ValueError, "has no rows"),
        ("m.jsonl", '{"image": "ok.png"}\n{bad\n', ValueError, r"m\.jsonl:2: invalid JSON"),
        ("m.jsonl", '["ok.png"]\n', ValueError, "must be a JSON object"),
        ("m.jsonl", '{"image": "ok.png", "timestamp": true}\n', ValueError, "timestamp must be a number"),
        ("m.txt", "ok.png\n", ValueError, "unsupported extension '.txt'"),
    ],
)
def test_bad_manifests_fail_with_line_and_column(
    tmp_path: Path, name: str, content: str, exc: type[Exception], match: str
) -> None:
    _img(tmp_path / "ok.png")
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(exc, match=match):
        read_manifest(path)


def test_missing_manifest_and_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path / "none.csv")
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        read_source(tmp_path / "none")


def test_read_source_dispatches(tree: Path, tmp_path: Path) -> None:
    assert len(read_source(tree).items) == 4
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": str(tree / "loose.webp")}) + "\n")
    from_manifest = read_source(manifest)
    assert [i.path for i in from_manifest.items] == [str(tree / "loose.webp")] and from_manifest.skipped == []


def test_pool_save_load_round_trip_is_atomic_and_exact(tmp_path: Path, tree: Path) -> None:
    pool = Pool(scan_folder(tree)).with_urls(tree.parent)
    path = pool.save(tmp_path / "models", 12)
    assert path == tmp_path / "models" / "12" / POOL_FILENAME
    assert [p.name for p in path.parent.iterdir()] == [POOL_FILENAME]  # no temp file left behind
    loaded = Pool.load(tmp_path / "models", "12")
    assert loaded.items == pool.items
    assert Pool.exists(tmp_path / "models", 12) and not Pool.exists(tmp_path / "models", 13)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and set(json.loads(lines[0])) == {
        "id",
        "path",
        "camera",
        "timestamp",
        "tracklet",
        "text",
        "url",
        "identity",
    }


def test_pool_lookup_rows_and_urls(tree: Path) -> None:
    pool = Pool(scan_folder(tree)).with_urls(tree.parent)
    assert len(pool) == 4 and "id_b/2.png" in pool and "zzz" not in pool
    assert pool.row_of("id_b/2.png") == 2 and pool.row_of("zzz") is None
    assert pool.url_for("id_a/0.JPG") == "/data/local-files/?d=images/id_a/0.JPG"
    assert pool.item("loose.webp").identity is None
    with pytest.raises(KeyError, match="zzz"):
        pool.item("zzz")
    bare = Pool(scan_folder(tree))
    with pytest.raises(ValueError, match="has no URL"):
        bare.url_for("loose.webp")
    kept = Pool([PoolItem("a", "/x/a.png", url="http://cdn/a.png")]).with_urls("/x")
    assert kept.url_for("a") == "http://cdn/a.png"


def test_local_files_url_quotes_and_rejects_outside_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    target = _img(root / "a b" / "ü#1.png")
    assert local_files_url(target, root) == "/data/local-files/?d=a%20b/%C3%BC%231.png"
    with pytest.raises(ValueError, match="not inside document_root"):
        local_files_url(tmp_path / "other.png", root)


def test_merged_appends_only_new_ids_and_keeps_rows(tree: Path) -> None:
    first = Pool(scan_folder(tree)[:2])
    merged, added = first.merged(scan_folder(tree))
    assert added == 2
    assert merged.ids[:2] == first.ids and merged.row_of("loose.webp") == 3
    again, added_again = merged.merged(scan_folder(tree))
    assert added_again == 0 and again.ids == merged.ids


def test_merged_takes_a_new_text_and_keeps_a_text_the_new_item_lacks() -> None:
    pool = Pool([PoolItem("a", "/a", camera="c1", text="red coat"), PoolItem("b", "/b", text="hat")])
    merged, added = pool.merged(
        [PoolItem("a", "/elsewhere", camera="c9", text="blue coat"), PoolItem("b", "/b"), PoolItem("c", "/c")]
    )
    assert added == 1 and merged.ids == ["a", "b", "c"]
    a = merged.item("a")
    assert (a.text, a.path, a.camera) == ("blue coat", "/a", "c1")  # only the text is replaced
    assert merged.item("b").text == "hat"  # a folder ingest (no text) leaves the captions as they are


def test_pool_rejects_duplicates_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="duplicate image id 'a'"):
        Pool([PoolItem("a", "/a"), PoolItem("a", "/b")])
    with pytest.raises(TypeError, match=r"items\[0\]"):
        Pool(["a"])  # type: ignore[list-item]


@pytest.mark.parametrize("project", ["", "a/b", "..", " "])
def test_bad_project_keys(tmp_path: Path, project: str) -> None:
    with pytest.raises(ValueError, match="project"):
        Pool.path_for(tmp_path, project)


def test_bad_project_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="project"):
        Pool.path_for(tmp_path, 1.5)  # type: ignore[arg-type]


def test_load_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="reid-al ingest"):
        Pool.load(tmp_path, "3")
    path = tmp_path / "3" / POOL_FILENAME
    path.parent.mkdir()
    path.write_text(
        json.dumps({"id": "a", "path": "/a"}) + "\n" + json.dumps({"id": "", "path": "/b"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"pool\.jsonl:2: .*'id' must be a non-empty string"):
        Pool.load(tmp_path, "3")


def test_items_from_dicts_validates() -> None:
    [item] = items_from_dicts([{"id": "a", "path": "/a", "timestamp": "5", "camera": 3}])
    assert item.timestamp == 5.0 and item.camera == "3"
    with pytest.raises(ValueError, match="'path'"):
        items_from_dicts([{"id": "a"}])
    with pytest.raises(ValueError, match="JSON object"):
        items_from_dicts(["a"])  # type: ignore[list-item]
