"""recsys.catalogue: attribute filters on any item column (values, lists, numeric bounds) and their errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.catalogue import Catalogue, Filter, as_filters
from recsys.data import IdMap
from recsys.exceptions import DataValidationError


@pytest.fixture()
def shop() -> Catalogue:
    """Five SKUs with a category, a brand, a price (one missing, one typed as text) and multi-valued tags."""
    meta = pd.DataFrame({"item": ["s1", "s2", "s3", "s4", "s5"],
                         "category": ["shoes", "shoes", "hats", "shoes", None],
                         "brand": ["acme", "zeta", "acme", "omni", "acme"],
                         "price": [49.0, 120.0, 15.0, np.nan, 80.0],
                         "size": ["42", "43", "M", "44", "42"],
                         "tags": [["sale", "new"], [], ["sale"], ["new"], []]})
    return Catalogue(IdMap(list(meta["item"])), meta)


def passing(catalogue: Catalogue, filters) -> list[str]:
    return list(catalogue.items.ids[catalogue.mask(filters)])


def test_filters_on_any_column_combine_by_and(shop):
    assert passing(shop, ["category:shoes"]) == ["s1", "s2", "s4"]
    assert passing(shop, ["brand:acme,zeta"]) == ["s1", "s2", "s3", "s5"], "a comma list: any of them"
    assert passing(shop, ["category:shoes", "brand:acme,zeta"]) == ["s1", "s2"]
    assert passing(shop, ["price<=80"]) == ["s1", "s3", "s5"], "a missing price fails a bound"
    assert passing(shop, ["price>=49", "price<=100"]) == ["s1", "s5"]
    assert passing(shop, ["tags:sale"]) == ["s1", "s3"], "a list column matches any of its values"
    assert passing(shop, ["size:42"]) == ["s1", "s5"] and passing(shop, ["price:120"]) == ["s2"], \
        "values compare as text: 120.0 is '120'"
    assert passing(shop, {"brand": ["omni"]}) == ["s4"] and passing(shop, {"brand": "zeta"}) == ["s2"], \
        "the mapping form (genre=) is the same filter"
    assert passing(shop, [Filter("category", ("hats",))]) == ["s3"]


@pytest.mark.parametrize("text, column, values, op, bound", [
    ("category:shoes", "category", ("shoes",), ":", None),
    (" brand : acme, zeta ,", "brand", ("acme", "zeta"), ":", None),
    ("price<=100", "price", (), "<=", 100.0),
    ("price>=9.5", "price", (), ">=", 9.5),
    ("url:http://x", "url", ("http://x",), ":", None),
])
def test_filter_text(text, column, values, op, bound):
    assert Filter.parse(text) == Filter(column, values, op, bound)
    assert as_filters([text]) == [Filter(column, values, op, bound)]


@pytest.mark.parametrize("filters, message", [
    (["colour:red"], r"Unknown item attribute 'colour' in filters\. Available: \['category', 'brand', 'price'"),
    (["shoes"], r"Filter 'shoes' is not understood\. Write attribute:value"),
    (["category:"], r"Filter 'category:' is not understood"),
    (["price<=cheap"], r"Filter 'price<=cheap': 'cheap' is not a number\. Write price<=<number>"),
    (["brand>=3"], r"Item attribute 'brand' holds no numbers, so >= cannot apply to it: filter it by value"),
])
def test_filter_errors_name_the_value_and_the_fix(shop, filters, message):
    with pytest.raises(DataValidationError, match=message):
        shop.mask(filters)


def test_a_catalogue_without_metadata_refuses_filters():
    with pytest.raises(DataValidationError, match="no item metadata"):
        Catalogue(IdMap(["a"])).mask(["category:x"])
