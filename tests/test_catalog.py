import json
import re
from collections import Counter
from pathlib import Path

import pytest

from llmauction_sim.domain.catalog import (
    MENTION_FORBIDDEN_CHARS,
    Ad,
    Catalog,
    CatalogError,
    load_catalog,
    validate_ads,
)


def _ad(ad_id: str = "Ad-1000", title: str = "Acme Shoes", category: str = "running_shoes",
        description: str = "Shoes.", keywords: tuple[str, ...] = ("shoes",)) -> dict:
    return {"id": ad_id, "title": title, "category": category, "description": description,
            "keywords": list(keywords)}


def _write(tmp_path: Path, data: object, name: str = "catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# --- the packaged catalog -------------------------------------------------------------------

def test_packaged_catalog_shape(catalog: Catalog) -> None:
    assert len(catalog) == 100
    assert len(catalog.categories) == 50
    per_category = Counter(ad.category for ad in catalog)
    assert set(per_category.values()) == {2}


def test_packaged_catalog_ids_and_titles(catalog: Catalog) -> None:
    assert len(set(catalog.ids)) == 100
    assert len({t.casefold() for t in catalog.titles}) == 100
    assert all(re.fullmatch(r"Ad-\d{4}", i) for i in catalog.ids)
    # IDs are spread out, not a counter.
    numbers = [int(i[3:]) for i in catalog.ids]
    assert numbers != sorted(numbers)
    for title in catalog.titles:
        assert title == title.strip() and title
        assert not any(ch in title for ch in MENTION_FORBIDDEN_CHARS), title
        assert re.fullmatch(r"[A-Za-z0-9 '&\-.,]+", title), title
        assert 2 <= len(title.split()) <= 6, title


def test_packaged_catalog_content(catalog: Catalog) -> None:
    for ad in catalog:
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", ad.category), ad.category
        assert 0 < len(ad.description) <= 160, ad.id
        assert 4 <= len(ad.keywords) <= 8, ad.id
        assert all(k == k.lower() and k for k in ad.keywords), ad.id


def test_packaged_catalog_is_cached(catalog: Catalog) -> None:
    assert load_catalog() is catalog


def test_explicit_path_equals_packaged(catalog: Catalog, tmp_path: Path) -> None:
    data = {"version": 1, "ads": [_ad(a.id, a.title, a.category, a.description, a.keywords)
                                  for a in catalog]}
    loaded = load_catalog(_write(tmp_path, data))
    assert loaded == catalog and loaded is not catalog
    assert load_catalog(str(_write(tmp_path, data, "again.json"))) == catalog


# --- lookups ------------------------------------------------------------------------------------

def test_lookups(catalog: Catalog) -> None:
    first = catalog[0]
    assert catalog.by_id(first.id) is first
    assert catalog.get(first.id) is first
    assert catalog.get("Ad-0000") is None
    assert catalog.index_of(catalog[37].id) == 37
    assert first.id in catalog and "Ad-0000" not in catalog
    assert catalog[-1] is list(catalog)[-1]


def test_unknown_id_errors_are_clear(catalog: Catalog) -> None:
    with pytest.raises(KeyError, match="unknown ad id 'Ad-0000'.*Catalog.get"):
        catalog.by_id("Ad-0000")
    with pytest.raises(KeyError, match="unknown ad id"):
        catalog.index_of("nope")
    with pytest.raises(KeyError, match="Ad-0001"):
        catalog.subset([catalog[0].id, "Ad-0001"])


def test_subset_keeps_given_order(catalog: Catalog) -> None:
    ids = [catalog[5].id, catalog[2].id, catalog[90].id]
    sub = catalog.subset(ids)
    assert isinstance(sub, Catalog)
    assert list(sub.ids) == ids
    assert sub.index_of(catalog[2].id) == 1
    assert len(catalog.subset([])) == 0


def test_categories_and_in_category(catalog: Catalog) -> None:
    cats = catalog.categories
    assert list(cats) == sorted(set(cats))
    shoes = catalog.in_category("running_shoes")
    assert len(shoes) == 2 and all(ad.category == "running_shoes" for ad in shoes)
    assert catalog.in_category("astronomy") == []


def test_ad_text_contains_parts() -> None:
    ad = Ad("Ad-1234", "Acme Shoes", "running_shoes", "Fast shoes.", ("run", "shoe"))
    assert ad.text() == "Acme Shoes. Fast shoes. Keywords: run, shoe"
    assert Ad("Ad-1234", "Acme", "x", "Plain.").text() == "Acme. Plain."


def test_ad_keywords_become_tuple() -> None:
    ad = Ad("Ad-1234", "Acme", "x", "d", ["a", "b"])  # type: ignore[arg-type]
    assert ad.keywords == ("a", "b")
    hash(ad)


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("ads, message", [
    ([_ad("Ad-1000"), _ad("Ad-1000", title="Other")], r"ad #1 \(Ad-1000\): duplicate id"),
    ([_ad("ad-1000")], r"id 'ad-1000' does not match 'Ad-NNNN'"),
    ([_ad("Ad-123")], r"id 'Ad-123' does not match"),
    ([_ad("Ad-12345")], r"id 'Ad-12345' does not match"),
    ([_ad("Ad-1234\n")], r"does not match"),
    ([_ad(title="Acme@Shop")], r"contains the markup character '@'; titles may not contain"),
    ([_ad(title="Acme [Shop]")], r"markup character '\['"),
    ([_ad(title="Acme Shop]")], r"markup character '\]'"),
    ([_ad(title="Acme\nShop")], r"markup character '\\n'"),
    ([_ad(title="Acme\rShop")], r"markup character '\\r'"),
    ([_ad(title=" Acme Shop")], r"leading or trailing whitespace; strip it"),
    ([_ad(title="Acme Shop ")], r"leading or trailing whitespace"),
    ([_ad(title="")], r"title is empty"),
    ([_ad(title="   ")], r"title is empty"),
    ([_ad("Ad-1000", title="Acme Shop"), _ad("Ad-2000", title="ACME shop")],
     r"ad #1 \(Ad-2000\): title 'ACME shop' duplicates the title of ad #0 \(Ad-1000\)"),
    ([_ad(category="")], r"category is empty; give every ad a category slug"),
    ([_ad(category="  ")], r"category is empty"),
])
def test_bad_catalog_files_raise(tmp_path: Path, ads: list, message: str) -> None:
    path = _write(tmp_path, {"version": 1, "ads": ads})
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data, message", [
    ([], r"expected a JSON object with an 'ads' list"),
    ({"version": 1}, r"expected a JSON object with an 'ads' list"),
    ({"version": 2, "ads": []}, r"version 2 is not supported"),
    ({"version": 1, "ads": ["Ad-1000"]}, r"ad #0 is a str, not an object"),
    ({"version": 1, "ads": [{"id": "Ad-1000", "title": "Acme"}]},
     r"ad #0 \(Ad-1000\) lacks the key\(s\) category, description, keywords"),
    ({"version": 1, "ads": [_ad() | {"keywords": "shoes"}]}, r"keywords must be a list"),
    ({"version": 1, "ads": [_ad() | {"title": 7}]}, r"title must be a string, got int"),
])
def test_bad_structure_raises(tmp_path: Path, data: object, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(CatalogError, match="does not exist; check the path") as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_bad_json_names_location(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1, "ads": [\n  {"id": "Ad-1000",,}\n]}', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"not valid JSON \(line 2, column") as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_catalog_error_is_value_error() -> None:
    assert issubclass(CatalogError, ValueError)


def test_validate_ads_direct() -> None:
    good = [Ad("Ad-1000", "Acme", "x", "d"), Ad("Ad-2000", "Bolt", "x", "d")]
    validate_ads(good)
    with pytest.raises(CatalogError, match="expected an Ad, got dict"):
        validate_ads([_ad()])  # type: ignore[list-item]
    with pytest.raises(CatalogError, match="markup character '@'"):
        Catalog([Ad("Ad-1000", "A@B", "x", "d")])


def test_catalog_is_immutable(catalog: Catalog) -> None:
    with pytest.raises(TypeError):
        catalog[0] = catalog[1]  # type: ignore[index]
    with pytest.raises(AttributeError):
        catalog[0].title = "Changed"  # type: ignore[misc]
