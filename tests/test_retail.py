"""A retailer's catalogue, tried as a new user would: an event export written by a European spreadsheet (';'
separated, day-granular dates, string SKUs) and a product file with a category, a brand, a price and a
description. Trained with the README's `recsys train`, asked through the CLI and the REST service; filters on
brand and on a price range, the product's own columns on every item, and a 422 naming the attributes when a
filter names one the catalogue does not have."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.additions import NewItem, item_vectors
from recsys.bundle import resolve
from recsys.cli import main
from recsys.engine import load_engine
from recsys.features import SENTENCE
from server import create_app

BRANDS = ("acme", "zeta", "omni", "nord")
CATEGORIES = ("shoes", "hats", "bags")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """(bundle root, products by SKU): 60 SKUs; 150 customers who each buy mostly within one brand."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("shop")
    skus = [f"SKU-{i:04d}" for i in range(60)]
    products = pd.DataFrame({
        "sku": skus,
        "name": [f"{BRANDS[i % 4]} {CATEGORIES[i % 3]} no. {i}" for i in range(60)],
        "category": [CATEGORIES[i % 3] for i in range(60)],
        "brand": [BRANDS[i % 4] for i in range(60)],
        "price": [round(9.5 + 3.25 * i, 2) for i in range(60)],
        "description": [f"A {CATEGORIES[i % 3][:-1]} by {BRANDS[i % 4]}, item {i}" for i in range(60)]})
    rows = []
    for c in range(150):
        brand = c % 4
        own = [i for i in range(60) if i % 4 == brand]
        for i in rng.choice(own, 8, replace=False).tolist() + rng.choice(60, 2, replace=False).tolist():
            day = f"2026-{1 + int(rng.integers(0, 11)):02d}-{1 + int(rng.integers(0, 28)):02d}"
            rows.append((f"cust{c}", skus[i], "purchase", day))
    events = pd.DataFrame(rows, columns=["customer_id", "sku", "event", "day"]).drop_duplicates(["customer_id", "sku"])
    events.to_csv(root / "events.csv", sep=";", index=False)
    products.to_csv(root / "products.csv", sep=";", index=False)
    assert main(["train", "--data", str(root / "events.csv"), "--user-col", "customer_id", "--item-col", "sku",
                 "--time-col", "day", "--items", str(root / "products.csv"), "--items-id-col", "sku",
                 "--out", str(root / "models"), "--quiet"]) == 0
    return root / "models", products.set_index("sku")


def _cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_brand_and_price_filters_through_the_cli_and_the_service_agree(shop, capsys, tmp_path):
    bundle, products = shop
    code, out, _ = _cli(capsys, ["recommend", "--bundle", str(bundle), "--user", "cust1", "--k", "4", "--json",
                                 "--filter", "brand:zeta,omni", "--filter", "price>=40", "--filter", "price<=150"])
    assert code == 0
    by_cli = json.loads(out)["items"]
    assert len(by_cli) == 4
    for item in by_cli:
        product = products.loc[item["id"]]
        assert product["brand"] in ("zeta", "omni") and 40 <= product["price"] <= 150, item
        assert item["attributes"]["price"] == product["price"] and item["title"] == product["name"]
    # cust1 buys zeta: the brand it buys comes first among the brands allowed
    assert products.loc[by_cli[0]["id"], "brand"] == "zeta"

    app = create_app({"BUNDLE": str(bundle), "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"})
    client = app.test_client()
    answer = client.get("/v1/users/cust1/recommendations?k=4&filter=brand:zeta,omni&filter=price>=40"
                        "&filter=price<=150")
    assert answer.status_code == 200
    assert [i["id"] for i in answer.get_json()["items"]] == [i["id"] for i in by_cli]
    assert answer.get_json()["items"][0]["attributes"] == by_cli[0]["attributes"]


def test_an_items_answer_carries_the_products_columns(shop, tmp_path):
    bundle, products = shop
    client = create_app({"BUNDLE": str(bundle), "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"}).test_client()
    answer = client.get("/v1/items/SKU-0013").get_json()
    product = products.loc["SKU-0013"]
    assert answer["title"] == product["name"] == "zeta hats no. 13"
    assert {key: answer["attributes"][key] for key in ("category", "brand", "price", "description")} == {
        "category": "hats", "brand": "zeta", "price": 51.75, "description": "A hat by zeta, item 13"}


def test_an_unknown_filter_is_named_with_the_attributes_there_are(shop, capsys, tmp_path):
    bundle, _ = shop
    client = create_app({"BUNDLE": str(bundle), "FEEDBACK_DB_URL": f"sqlite:///{tmp_path / 'fb.db'}"}).test_client()
    answer = client.get("/v1/users/cust1/recommendations?k=3&filter=colour:red")
    assert answer.status_code == 422 and answer.content_type == "application/problem+json"
    detail = answer.get_json()["detail"]
    assert "'colour:red'" in detail and all(f"'{c}'" in detail for c in ("category", "brand", "price", "description"))
    assert client.get("/v1/users/cust1/recommendations?k=3&brand=acme").status_code == 422, "not silently ignored"
    code, _, err = _cli(capsys, ["recommend", "--bundle", str(bundle), "--user", "cust1", "--filter", "colour:red"])
    assert code == 2 and "colour" in err and "'brand'" in err and "'price'" in err


def test_item_text_columns_feed_the_two_towers_item_tower_and_place_a_product_by_its_description(shop, capsys):
    """`--item-text-cols name,description`: the pretrained encoder's vector of those columns is one more
    two-tower feature; the bundle keeps the tower, so a product added with only a description is placed by it
    among the products its text describes."""
    bundle, products = shop
    root = bundle.parent
    common = ["train", "--data", str(root / "events.csv"), "--user-col", "customer_id", "--item-col", "sku",
              "--items", str(root / "products.csv"), "--items-id-col", "sku", "--quiet"]
    code, _, err = _cli(capsys, [*common, "--item-text-cols", "name,description", "--out", str(root / "x")])
    assert code == 2 and "--model two_tower" in err
    assert main([*common, "--model", "two_tower", "--item-text-cols", "name,description", "--epochs", "5",
                 "--no-index", "--out", str(root / "tower")]) == 0
    engine = load_engine(resolve(root / "tower"))[0]
    assert engine.item_tower.featurizer.text_columns == ("name", "description")
    assert engine.item_tower.featurizer.kinds_[SENTENCE] == "sentence"
    vectors, rules = item_vectors(engine, [NewItem("SKU-new", {"description": "A shoe by zeta, new this week"})])
    assert rules == ["item tower"]
    nearest = engine.items.ids[np.argsort(-(engine.similarity_vectors @ vectors[0]))[:5]]
    # customers here buy by brand, so the learned space groups products by brand: the description's brand decides
    assert sum(products.loc[i, "brand"] == "zeta" for i in nearest) >= 4, products.loc[list(nearest), ["brand"]]
