"""A seeded, synthetic product catalog with queries and graded judgments (BEIR layout).

Why: Cranfield is small, old and has no product attributes, prices or popularity. The demo
catalog gives the whole system (hybrid retrieval, static features, LTR, drift) a realistic
e-commerce workload whose relevance labels follow a written rule, so that every number
measured on it can be explained. Everything is derived from one integer seed through
``random.Random`` instances keyed by purpose (products, queries, judgments), so the same
seed gives byte-identical files on any machine and changing the number of queries does
not change the products.

Judgment rule (a query is a category plus attribute constraints taken from a real product):

* 3 -- the product is in the query's category, of an accepted product type (when the query
  names one) and matches every other attribute the query names;
* 2 -- category and type match and at least half (rounded up) of the other attributes do;
* 1 -- category only (a different type or too few attributes); a seeded sample of these;
* 0 -- hard negatives: products of OTHER categories that share the most query words in
  their title and attribute list (same brand / color / material, "laptop" in a backpack...).

Every product graded 2 or 3 is judged (recall is meaningful); grade 1 is sampled
(``max_grade1`` per query) and grade 0 is a sample of hard negatives (``n_negatives``).
See docs/demo_catalog.md.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexing.errors import IndexingError
from ltr.types import Judgment

__all__ = [
    "CATEGORIES",
    "QUERY_TYPES",
    "CategorySpec",
    "DemoCatalog",
    "DemoCatalogError",
    "DemoQuery",
    "Product",
    "attribute_vocabulary",
    "build_demo_catalog",
    "generate_products",
    "generate_queries",
    "grade",
    "judge",
    "misspell",
    "tokens",
    "write_beir",
]

DEFAULT_SEED = 13
DEFAULT_PRODUCTS = 20_000
DEFAULT_QUERIES = 400
QUERY_TYPES: tuple[str, ...] = ("head", "torso", "tail", "misspelled", "synonym")
# Share of each query type in the generated set (rounded; the remainder goes to "torso").
QUERY_MIX: Mapping[str, float] = {
    "head": 0.20,
    "torso": 0.30,
    "tail": 0.25,
    "misspelled": 0.125,
    "synonym": 0.125,
}
# Attributes a query may constrain besides the category ("type" is the product type).
QUERY_ATTRS: tuple[str, ...] = ("type", "brand", "gender", "feature", "color", "material", "size")

_TOKEN = re.compile(r"[a-z0-9]+")


class DemoCatalogError(IndexingError, ValueError):
    """Invalid generator arguments (sizes, output directory)."""


def tokens(text: str) -> list[str]:
    """Lowercase alphanumeric tokens: the vocabulary unit of the synonym checks."""
    return _TOKEN.findall(text.lower())


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class CategorySpec:
    """One product category and its own attribute vocabulary.

    ``synonyms`` maps a query word that never appears in the catalog to the product types it
    stands for (empty tuple = any type of the category): what lexical retrieval cannot match.
    """

    name: str
    noun: str  # plural noun used in head queries and descriptions ("shoes")
    types: tuple[str, ...]
    brands: tuple[str, ...]
    colors: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    genders: tuple[str, ...]  # empty: not a gendered category
    features: tuple[str, ...]
    uses: tuple[str, ...]  # "ideal for <use>"
    blurbs: tuple[str, ...]  # category sentences with {type}/{material}/{color} slots
    price: tuple[float, float]  # typical (low, high) price
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    size_label: str = "Size"


def attribute_vocabulary() -> list[str]:
    """The words of every category's attribute values (names, nouns, types, brands, colors,
    materials, features, uses, synonyms), sorted: the words that carry a product's meaning;
    descriptions put generic sentences around them. Defined after CATEGORIES is built."""
    words: set[str] = set()
    for c in CATEGORIES.values():
        for value in (c.name, c.noun, *c.types, *c.brands, *c.colors, *c.materials):
            words.update(tokens(value))
        for value in (*c.features, *c.uses, *c.synonyms):
            words.update(tokens(value))
    return sorted(words)


_APPAREL_SIZES = ("XS", "S", "M", "L", "XL", "XXL")
_NEUTRALS = ("black", "white", "grey", "navy", "beige", "brown")

CATEGORIES: dict[str, CategorySpec] = {
    c.name: c
    for c in (
        CategorySpec(
            "shoes",
            "shoes",
            ("running shoes", "trainers", "hiking boots", "ankle boots", "loafers", "sandals"),
            (
                "Nordvik",
                "Stridewell",
                "Pacemark",
                "Altura",
                "Corvo",
                "Kestrel",
                "Trailborn",
                "Velora",
            ),
            (*_NEUTRALS, "red", "blue", "green", "olive"),
            ("leather", "suede", "mesh", "canvas", "synthetic", "nubuck"),
            tuple(f"US {n}" for n in range(5, 14)),
            ("men", "women", "kids"),
            ("waterproof", "breathable", "lightweight", "cushioned", "slip-resistant", "wide fit"),
            (
                "daily runs",
                "long walks",
                "trail hiking",
                "the office",
                "weekend trips",
                "gym sessions",
            ),
            (
                "A grippy rubber outsole and a padded collar keep every step stable.",
                "The {material} upper is stitched for a snug, secure fit.",
                "A removable insole makes these {type} easy to clean.",
            ),
            (40.0, 180.0),
            {
                "sneakers": ("running shoes", "trainers"),
                "kicks": ("running shoes", "trainers"),
                "footwear": (),
            },
        ),
        CategorySpec(
            "jackets",
            "jackets",
            (
                "rain jacket",
                "puffer jacket",
                "denim jacket",
                "bomber jacket",
                "fleece jacket",
                "softshell jacket",
            ),
            ("Nordvik", "Harbourline", "Peakwear", "Altura", "Fjellmark", "Urbana", "Kestrel"),
            (*_NEUTRALS, "olive", "red", "yellow", "burgundy"),
            ("nylon", "polyester", "down", "denim", "fleece", "wool blend", "cotton"),
            _APPAREL_SIZES,
            ("men", "women", "kids"),
            ("waterproof", "windproof", "packable", "insulated", "hooded", "breathable"),
            ("city commutes", "mountain hikes", "rainy days", "winter walks", "travel"),
            (
                "Taped seams and a storm flap keep the weather out.",
                "Zippered hand pockets hold your phone and keys.",
                "The {material} shell is finished in a clean {color} tone.",
            ),
            (50.0, 260.0),
            {
                "anorak": ("rain jacket", "softshell jacket"),
                "windbreaker": ("rain jacket", "softshell jacket"),
                "coat": (),
            },
        ),
        CategorySpec(
            "headphones",
            "headphones",
            (
                "over-ear headphones",
                "on-ear headphones",
                "in-ear earbuds",
                "gaming headset",
                "sports earbuds",
            ),
            ("Aurion", "Sonique", "Bassline", "Klangwerk", "Echoform", "Tonal", "Vireo"),
            ("black", "white", "silver", "navy", "rose gold", "midnight blue", "red"),
            ("plastic", "aluminum", "leather", "memory foam"),
            (),
            (),
            (
                "wireless",
                "bluetooth",
                "noise cancelling",
                "foldable",
                "with microphone",
                "long battery life",
            ),
            ("commuting", "the gym", "long flights", "gaming marathons", "home office calls"),
            (
                "Custom drivers deliver deep bass and crisp highs.",
                "Soft {material} cushions stay comfortable for hours.",
                "A single charge lasts through a full day of listening.",
            ),
            (25.0, 350.0),
            {
                "earphones": ("in-ear earbuds", "sports earbuds"),
                "earpieces": ("in-ear earbuds", "sports earbuds"),
            },
        ),
        CategorySpec(
            "laptops",
            "laptops",
            ("ultrabook", "gaming laptop", "2-in-1 laptop", "business laptop", "chromebook"),
            ("Aurion", "Lumetra", "Corebyte", "Zentek", "Novabook", "Quanta"),
            ("silver", "black", "grey", "blue", "white"),
            ("aluminum", "magnesium alloy", "plastic", "carbon fiber"),
            ("13 inch", "14 inch", "15.6 inch", "16 inch", "17 inch"),
            (),
            (
                "touchscreen",
                "backlit keyboard",
                "16GB RAM",
                "1TB SSD",
                "OLED display",
                "long battery life",
            ),
            ("students", "remote work", "video editing", "travel", "gaming"),
            (
                "A fast processor and quick storage keep apps responsive.",
                "The {material} chassis is thin enough to slip into any bag.",
                "A full-size keyboard and a precise trackpad make long sessions easy.",
            ),
            (300.0, 2200.0),
            {"notebook": (), "netbook": ("chromebook", "ultrabook")},
            "Screen",
        ),
        CategorySpec(
            "sofas",
            "sofas",
            (
                "sectional sofa",
                "loveseat",
                "sleeper sofa",
                "chesterfield sofa",
                "modular sofa",
                "corner sofa",
            ),
            ("Hemlund", "Casaverde", "Loftline", "Maison Ros", "Oakhaven", "Sundby"),
            (*_NEUTRALS, "green", "mustard", "blue", "terracotta"),
            ("velvet", "linen", "leather", "boucle", "microfiber", "cotton"),
            ("2-seater", "3-seater", "4-seater"),
            (),
            ("reclining", "storage", "removable covers", "stain-resistant", "solid wood legs"),
            ("small apartments", "family rooms", "movie nights", "guest rooms"),
            (
                "Deep seats and plump cushions invite you to sink in.",
                "The {material} upholstery is soft to the touch and easy to care for.",
                "A sturdy hardwood frame supports years of daily lounging.",
            ),
            (300.0, 2500.0),
            {"couch": (), "settee": ("loveseat",), "davenport": ()},
            "Seats",
        ),
        CategorySpec(
            "mugs",
            "mugs",
            ("coffee mug", "travel mug", "tea mug", "camping mug", "latte mug"),
            ("Brewhaus", "Kiln & Co", "Morningside", "Potterly", "Steamline", "Casaverde"),
            ("white", "black", "blue", "green", "speckled grey", "terracotta", "pink"),
            ("ceramic", "stoneware", "porcelain", "stainless steel", "enamel", "glass"),
            ("8 oz", "12 oz", "16 oz", "20 oz"),
            (),
            ("dishwasher safe", "microwave safe", "insulated", "leak-proof lid", "handmade"),
            ("slow mornings", "the office", "road trips", "camping", "afternoon tea"),
            (
                "A comfortable handle and a smooth rim make every sip pleasant.",
                "The {material} body keeps drinks at the right temperature.",
                "Each {type} is glazed in a rich {color} finish.",
            ),
            (8.0, 45.0),
            {"cup": (), "tumbler": ("travel mug",), "beaker": ()},
            "Capacity",
        ),
        CategorySpec(
            "backpacks",
            "backpacks",
            ("hiking backpack", "laptop backpack", "school backpack", "travel backpack", "daypack"),
            ("Nordvik", "Trailborn", "Peakwear", "Urbana", "Packwise", "Harbourline"),
            (*_NEUTRALS, "olive", "red", "orange", "teal"),
            ("nylon", "canvas", "polyester", "leather", "ripstop"),
            ("15 L", "20 L", "25 L", "30 L", "40 L"),
            ("men", "women", "kids"),
            (
                "waterproof",
                "padded laptop sleeve",
                "anti-theft",
                "USB charging port",
                "lightweight",
            ),
            ("commuting", "day hikes", "school", "weekend trips", "air travel"),
            (
                "Padded shoulder straps spread the load evenly.",
                "Several zip compartments keep your gear organized.",
                "The {material} body shrugs off scuffs and light rain.",
            ),
            (25.0, 220.0),
            {"rucksack": (), "knapsack": (), "bookbag": ("school backpack",)},
            "Volume",
        ),
        CategorySpec(
            "watches",
            "watches",
            (
                "smartwatch",
                "dive watch",
                "chronograph watch",
                "dress watch",
                "fitness tracker",
                "field watch",
            ),
            ("Chronex", "Tidemark", "Aurion", "Meridian", "Vireo", "Halden"),
            ("black", "silver", "gold", "rose gold", "blue", "green", "white"),
            ("stainless steel", "titanium", "leather strap", "silicone strap", "ceramic"),
            ("38 mm", "40 mm", "42 mm", "44 mm", "46 mm"),
            ("men", "women"),
            (
                "water resistant",
                "GPS",
                "heart rate monitor",
                "sapphire crystal",
                "automatic movement",
                "solar powered",
            ),
            ("everyday wear", "diving", "running", "formal events", "outdoor adventures"),
            (
                "A scratch-resistant face and luminous hands stay readable day and night.",
                "The {material} case feels solid on the wrist.",
                "Quick-release pins make it simple to change the band.",
            ),
            (40.0, 900.0),
            {"timepiece": (), "wristwatch": ()},
            "Case",
        ),
        CategorySpec(
            "tshirts",
            "t-shirts",
            (
                "crew neck t-shirt",
                "v-neck t-shirt",
                "polo shirt",
                "graphic t-shirt",
                "long sleeve t-shirt",
            ),
            ("Urbana", "Cottonfield", "Basicly", "Harbourline", "Peakwear", "Velora"),
            (*_NEUTRALS, "red", "green", "yellow", "sky blue", "heather grey"),
            ("cotton", "organic cotton", "linen", "polyester", "merino wool"),
            _APPAREL_SIZES,
            ("men", "women", "kids"),
            ("slim fit", "relaxed fit", "moisture-wicking", "quick-dry", "pre-shrunk"),
            ("casual days", "workouts", "layering", "summer evenings", "travel"),
            (
                "Soft {material} feels great straight out of the box.",
                "Reinforced seams hold their shape wash after wash.",
                "A classic cut pairs easily with jeans or shorts.",
            ),
            (10.0, 60.0),
            {"tee": ("crew neck t-shirt", "v-neck t-shirt", "graphic t-shirt")},
        ),
        CategorySpec(
            "sunglasses",
            "sunglasses",
            (
                "aviator sunglasses",
                "wayfarer sunglasses",
                "round sunglasses",
                "sports sunglasses",
                "cat-eye sunglasses",
            ),
            ("Solenne", "Raylight", "Corvo", "Meridian", "Vireo"),
            ("black", "tortoise", "gold", "silver", "brown", "clear", "green"),
            ("acetate", "metal", "titanium", "polycarbonate"),
            (),
            ("men", "women"),
            ("polarized", "UV400", "mirrored lenses", "blue light filter", "lightweight"),
            ("beach days", "driving", "cycling", "city strolls"),
            (
                "Lenses block glare while keeping colors true.",
                "The {material} frame is light enough to forget you are wearing it.",
                "A protective case and a cleaning cloth are included.",
            ),
            (15.0, 250.0),
            {"shades": ()},
        ),
        CategorySpec(
            "smartphones",
            "smartphones",
            (
                "flagship smartphone",
                "budget smartphone",
                "foldable smartphone",
                "rugged smartphone",
                "compact smartphone",
            ),
            ("Lumetra", "Zentek", "Novaphone", "Quanta", "Aurion"),
            ("black", "white", "silver", "blue", "green", "purple"),
            ("glass", "aluminum", "plastic", "titanium"),
            ("64GB", "128GB", "256GB", "512GB"),
            (),
            (
                "5G",
                "dual SIM",
                "triple camera",
                "fast charging",
                "wireless charging",
                "water resistant",
            ),
            ("photography", "streaming", "business travel", "everyday use"),
            (
                "A bright display stays readable in direct sunlight.",
                "The {material} back resists fingerprints.",
                "A large battery easily lasts a full day.",
            ),
            (120.0, 1400.0),
            {"cellphone": (), "mobile": ()},
            "Storage",
        ),
        CategorySpec(
            "televisions",
            "televisions",
            (
                "OLED television",
                "QLED television",
                "LED television",
                "projector screen television",
                "portable television",
            ),
            ("Lumetra", "Visionex", "Zentek", "Brightwave", "Quanta"),
            ("black", "silver", "grey", "white"),
            (),
            ("32 inch", "43 inch", "50 inch", "55 inch", "65 inch", "75 inch"),
            (),
            ("4K", "HDR", "120Hz", "Dolby Vision", "HDMI 2.1", "voice control"),
            ("movie nights", "sports", "console gaming", "bedrooms", "living rooms"),
            (
                "Deep blacks and vivid color make every scene pop.",
                "Built-in streaming apps put your favorite shows a click away.",
                "A slim bezel keeps the focus on the picture.",
            ),
            (180.0, 3000.0),
            {"tv": (), "telly": ()},
            "Screen",
        ),
        CategorySpec(
            "lamps",
            "lamps",
            ("desk lamp", "floor lamp", "table lamp", "bedside lamp", "arc lamp"),
            ("Lysholm", "Casaverde", "Brightwave", "Loftline", "Oakhaven"),
            ("black", "white", "brass", "green", "natural", "grey"),
            ("brass", "ceramic", "glass", "wood", "metal", "rattan"),
            (),
            (),
            ("dimmable", "LED", "USB port", "adjustable arm", "touch control"),
            ("reading", "home offices", "living rooms", "bedrooms"),
            (
                "A warm glow sets a calm mood in the evening.",
                "The {material} base keeps the lamp steady.",
                "An energy-saving bulb is included.",
            ),
            (20.0, 300.0),
            {"luminaire": ()},
        ),
        CategorySpec(
            "bottles",
            "water bottles",
            (
                "vacuum water bottle",
                "sports water bottle",
                "glass water bottle",
                "kids water bottle",
                "collapsible water bottle",
            ),
            ("Hydrova", "Trailborn", "Steamline", "Packwise", "Peakwear"),
            ("black", "white", "blue", "green", "pink", "orange", "clear"),
            ("stainless steel", "BPA-free plastic", "glass", "silicone", "aluminum"),
            ("500 ml", "750 ml", "1 L", "1.5 L"),
            (),
            ("leak-proof", "double-walled", "straw lid", "dishwasher safe", "carry loop"),
            ("the gym", "hiking", "school", "the office", "cycling"),
            (
                "A wide mouth makes it easy to add ice and to clean.",
                "The {material} body is tough enough for daily knocks.",
                "A secure lid clicks shut so nothing spills in your bag.",
            ),
            (8.0, 50.0),
            {"flask": ("vacuum water bottle",), "canteen": ()},
            "Capacity",
        ),
        CategorySpec(
            "chairs",
            "office chairs",
            (
                "ergonomic office chair",
                "gaming chair",
                "task chair",
                "executive chair",
                "drafting chair",
            ),
            ("Ergoline", "Sitwell", "Loftline", "Corebyte", "Halden"),
            ("black", "grey", "white", "blue", "red"),
            ("mesh", "leather", "fabric", "faux leather"),
            (),
            (),
            ("lumbar support", "adjustable armrests", "headrest", "reclining", "swivel base"),
            ("home offices", "gaming setups", "long workdays", "study rooms"),
            (
                "Smooth casters glide across hard floors and rugs alike.",
                "The {material} backrest stays cool during long sessions.",
                "Height and tilt adjust with a single lever.",
            ),
            (80.0, 900.0),
        ),
        CategorySpec(
            "tents",
            "tents",
            ("dome tent", "backpacking tent", "family tent", "pop-up tent", "ultralight tent"),
            ("Trailborn", "Fjellmark", "Nordvik", "Peakwear", "Campwise"),
            ("green", "orange", "grey", "blue", "olive", "yellow"),
            ("nylon", "polyester", "ripstop nylon", "canvas"),
            ("1-person", "2-person", "4-person", "6-person"),
            (),
            ("waterproof", "freestanding", "quick setup", "vestibule", "lightweight"),
            ("backpacking trips", "festivals", "family camping", "alpine routes"),
            (
                "Color-coded poles make pitching fast.",
                "The {material} fly sheds rain and blocks wind.",
                "Mesh panels keep the air flowing on warm nights.",
            ),
            (60.0, 700.0),
            {"bivouac": ("backpacking tent", "ultralight tent")},
            "Capacity",
        ),
        CategorySpec(
            "bikes",
            "bikes",
            (
                "road bike",
                "mountain bike",
                "hybrid bike",
                "electric bike",
                "folding bike",
                "kids bike",
            ),
            ("Velora", "Ridgeline", "Spokehaus", "Pacemark", "Kestrel"),
            ("black", "white", "red", "blue", "green", "matte grey"),
            ("aluminum", "carbon fiber", "steel", "titanium"),
            ("S frame", "M frame", "L frame", "XL frame"),
            (),
            ("disc brakes", "suspension fork", "21-speed", "lightweight", "integrated lights"),
            ("commuting", "weekend rides", "trail riding", "racing", "city errands"),
            (
                "Precise shifting keeps the cadence smooth on every climb.",
                "The {material} frame balances stiffness and comfort.",
                "Puncture-resistant tires roll confidently over rough roads.",
            ),
            (200.0, 4000.0),
            {"bicycle": ()},
            "Frame",
        ),
        CategorySpec(
            "blenders",
            "blenders",
            ("countertop blender", "personal blender", "immersion blender", "high-speed blender"),
            ("Mixwell", "Brewhaus", "Kitchara", "Steamline"),
            ("black", "white", "silver", "red", "sage green"),
            ("glass jar", "BPA-free plastic", "stainless steel"),
            ("0.6 L", "1 L", "1.5 L", "2 L"),
            (),
            ("variable speed", "pulse mode", "ice crushing", "dishwasher safe", "quiet motor"),
            ("shakes", "soups", "frozen drinks", "baby food", "sauces"),
            (
                "Sharp stainless blades purée fruit in seconds.",
                "The {material} container is easy to pour from.",
                "Non-slip feet keep it steady on the counter.",
            ),
            (25.0, 450.0),
            {"liquidiser": ()},
            "Capacity",
        ),
        CategorySpec(
            "dresses",
            "dresses",
            (
                "maxi dress",
                "midi dress",
                "wrap dress",
                "shirt dress",
                "cocktail dress",
                "summer dress",
            ),
            ("Velora", "Solenne", "Maison Ros", "Cottonfield", "Urbana"),
            (*_NEUTRALS, "red", "emerald", "floral print", "blush pink", "mustard"),
            ("cotton", "linen", "silk", "viscose", "chiffon", "jersey"),
            _APPAREL_SIZES,
            ("women",),
            ("pockets", "adjustable straps", "lined", "sleeveless", "belted"),
            ("weddings", "summer days", "the office", "date nights", "holidays"),
            (
                "The flowing {material} moves beautifully with every step.",
                "A flattering cut works from day to evening.",
                "Hidden seams give it a clean, polished look.",
            ),
            (25.0, 220.0),
            {"gown": ("cocktail dress", "maxi dress"), "frock": ()},
        ),
        CategorySpec(
            "rugs",
            "rugs",
            ("area rug", "runner rug", "shag rug", "outdoor rug", "round rug"),
            ("Hemlund", "Oakhaven", "Casaverde", "Sundby", "Weavery"),
            ("beige", "grey", "navy", "ivory", "terracotta", "green", "multicolor"),
            ("wool", "jute", "cotton", "polypropylene", "viscose"),
            ("2x3 ft", "5x7 ft", "8x10 ft", "9x12 ft"),
            (),
            ("washable", "non-slip backing", "hand-woven", "low pile", "stain-resistant"),
            ("living rooms", "hallways", "patios", "bedrooms", "nurseries"),
            (
                "A dense weave feels soft underfoot.",
                "The {material} fibers hold their color for years.",
                "It anchors a seating area and softens echoes.",
            ),
            (30.0, 900.0),
            {"carpet": ()},
        ),
    )
}

# Sentences appended to reach the target body length; they must never contain a synonym.
_FILLER: tuple[str, ...] = (
    "Free returns within thirty days.",
    "Backed by a two-year warranty.",
    "Ships in recyclable packaging.",
    "Designed in-house and tested by our team before release.",
    "Check the size guide before ordering to find your perfect match.",
    "Thousands of happy customers have made it a bestseller.",
    "Care instructions are printed on the label.",
    "Our support team answers questions seven days a week.",
    "Order today and it ships within one business day.",
    "Made to a high standard with carefully chosen parts.",
    "A great gift for friends and family.",
    "Part of our bestselling everyday collection.",
)

_GENDER_WORD = {"men": "men's", "women": "women's", "kids": "kids'"}
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBORS: dict[str, str] = {}
for _row in _KEYBOARD_ROWS:
    for _i, _ch in enumerate(_row):
        _NEIGHBORS[_ch] = _row[max(0, _i - 1) : _i] + _row[_i + 1 : _i + 2]


# --------------------------------------------------------------------------- products


@dataclass(frozen=True)
class Product:
    """One generated catalog item (``gender`` is "" in categories without one)."""

    id: str
    category: str
    type: str
    brand: str
    color: str
    material: str
    size: str
    gender: str
    features: tuple[str, ...]
    title: str
    text: str
    price: float
    rating: float | None  # None = no reviews yet: the key is left out (NaN downstream)
    review_count: int
    popularity: float

    def attributes_text(self) -> str:
        """The human-readable attribute list (its own text field in the corpus)."""
        spec = CATEGORIES[self.category]
        parts = [f"Type: {self.type}", f"Brand: {self.brand}", f"Color: {self.color}"]
        if self.material:
            parts.append(f"Material: {self.material}")
        if self.size:
            parts.append(f"{spec.size_label}: {self.size}")
        if self.gender:
            parts.append(f"For: {self.gender}")
        parts.append(f"Features: {', '.join(self.features)}")
        return "; ".join(parts)

    def to_row(self) -> dict[str, object]:
        """The BEIR corpus row: strings become text fields, numbers numeric attributes."""
        row: dict[str, object] = {
            "_id": self.id,
            "title": self.title,
            "text": self.text,
            "category": self.category,
            "type": self.type,
            "brand": self.brand,
            "color": self.color,
        }
        if self.material:
            row["material"] = self.material
        if self.size:
            row["size"] = self.size
        if self.gender:
            row["gender"] = self.gender
        row["features"] = ", ".join(self.features)
        row["attributes"] = self.attributes_text()
        row["price"] = self.price
        if self.rating is not None:
            row["rating"] = self.rating
        row["review_count"] = self.review_count
        row["popularity"] = self.popularity
        return row


def _check_sizes(n: int, name: str, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise DemoCatalogError(f"{name} must be an int, got {type(n).__name__}")
    if n < minimum:
        raise DemoCatalogError(f"{name} must be >= {minimum}, got {n}")


def _title(rng: random.Random, spec: CategorySpec, p: dict[str, object]) -> str:
    brand, typ, color = str(p["brand"]), str(p["type"]), str(p["color"])
    material, size, gender = str(p["material"]), str(p["size"]), str(p["gender"])
    feats: tuple[str, ...] = p["features"]  # type: ignore[assignment]
    feat = feats[0]
    gword = _GENDER_WORD.get(gender, "")
    mat = f"{material} " if material else ""
    choice = rng.randrange(6)
    if choice == 0:
        t = f"{brand} {gword} {feat} {mat}{typ}"
    elif choice == 1:
        t = f"{brand} {typ} - {color}" + (f", {size}" if size else "")
    elif choice == 2:
        t = f"{brand} {mat}{typ} in {color}"
    elif choice == 3:
        t = f"{gword} {color} {mat}{typ} by {brand}"
    elif choice == 4:
        t = f"{brand} {color} {typ}, {feat}"
    else:
        t = f"{brand} {feat} {typ} ({color}" + (f", {material})" if material else ")")
    return " ".join(t.split())


def _description(rng: random.Random, spec: CategorySpec, p: dict[str, object]) -> str:
    brand, typ, color = str(p["brand"]), str(p["type"]), str(p["color"])
    material, gender = str(p["material"]), str(p["gender"])
    feats: tuple[str, ...] = p["features"]  # type: ignore[assignment]
    use = rng.choice(spec.uses)
    who = f" for {gender}" if gender else ""
    mat = f"{material} " if material else ""
    openers = (
        f"From {brand}: the {typ}{who} in {color}, made for {use}.",
        f"Meet the {color} {mat}{typ} from {brand}, built for {use}.",
        f"This {brand} {typ} pairs {mat}construction with a {color} finish{who}.",
    )
    feat_txt = feats[0] if len(feats) == 1 else f"{', '.join(feats[:-1])} and {feats[-1]}"
    middles = (
        f"Key features: {feat_txt}.",
        f"Highlights include {feat_txt}.",
        f"It stands out with {feat_txt}, ready for {use}.",
    )
    blurb = rng.choice(spec.blurbs).format(type=typ, material=material or "sturdy", color=color)
    sentences = [rng.choice(openers), rng.choice(middles)]
    if rng.random() < 0.7:
        sentences.append(blurb)
    fillers = list(_FILLER)
    rng.shuffle(fillers)
    n_tok = sum(len(s.split()) for s in sentences)
    target = rng.randint(40, 70)
    while n_tok < target and fillers:
        s = fillers.pop()
        sentences.append(s)
        n_tok += len(s.split())
    return " ".join(sentences)


def generate_products(
    n_products: int = DEFAULT_PRODUCTS,
    seed: int = DEFAULT_SEED,
) -> list[Product]:
    """Products spread evenly over the categories (round-robin, then shuffled ids).

    Prices follow a log-normal per category scaled by a per-brand tier; ratings cluster
    around a per-brand quality; review counts are heavy-tailed; popularity mixes both.
    About 3% of products have no reviews and hence no rating (NaN downstream).
    """
    _check_sizes(n_products, "n_products", len(CATEGORIES))
    rng = random.Random(f"demo-catalog/{seed}/products")
    specs = list(CATEGORIES.values())
    tier = {(s.name, b): rng.uniform(0.7, 1.5) for s in specs for b in s.brands}
    quality = {(s.name, b): rng.uniform(3.2, 4.6) for s in specs for b in s.brands}
    width = max(6, len(str(n_products)))
    out: list[Product] = []
    for i in range(n_products):
        spec = specs[i % len(specs)]
        brand = rng.choice(spec.brands)
        p: dict[str, object] = {
            "brand": brand,
            "type": rng.choice(spec.types),
            "color": rng.choice(spec.colors),
            "material": rng.choice(spec.materials) if spec.materials else "",
            "size": rng.choice(spec.sizes) if spec.sizes else "",
            "gender": rng.choice(spec.genders) if spec.genders else "",
            "features": tuple(sorted(rng.sample(spec.features, rng.choice((1, 2, 2, 3))))),
        }
        lo, hi = spec.price
        mid = math.sqrt(lo * hi)
        price = mid * tier[spec.name, brand] * math.exp(rng.gauss(0.0, 0.35))
        price = max(lo * 0.5, min(hi * 1.5, price))
        price = round(max(1.0, round(price)) - 0.01, 2)
        reviews = 0 if rng.random() < 0.03 else int(math.exp(rng.gauss(3.5, 1.4)))
        rating = (
            None
            if reviews == 0
            else round(min(5.0, max(1.0, rng.gauss(quality[spec.name, brand], 0.5))), 1)
        )
        pop_raw = 0.35 * math.log1p(reviews) + (rating or 3.0) * 0.4 + rng.gauss(0.0, 0.5)
        popularity = round(1.0 / (1.0 + math.exp(-(pop_raw - 3.0))), 4)
        out.append(
            Product(
                id=f"p{i + 1:0{width}d}",
                category=spec.name,
                type=str(p["type"]),
                brand=brand,
                color=str(p["color"]),
                material=str(p["material"]),
                size=str(p["size"]),
                gender=str(p["gender"]),
                features=p["features"],  # type: ignore[arg-type]
                title=_title(rng, spec, p),
                text=_description(rng, spec, p),
                price=price,
                rating=rating,
                review_count=reviews,
                popularity=popularity,
            )
        )
    return out


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class DemoQuery:
    """A query with the structured need it was generated from.

    ``constraints`` maps an attribute (see QUERY_ATTRS) to the accepted values; "type" may
    accept several (a synonym such as "sneakers" accepts running shoes and trainers).
    ``source`` is the clean text a misspelled query was derived from; ``synonym`` the
    out-of-catalog word a synonym query uses.
    """

    id: str
    text: str
    type: str
    category: str
    constraints: Mapping[str, tuple[str, ...]]
    source: str | None = None
    synonym: str | None = None

    def to_row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "_id": self.id,
            "text": self.text,
            "type": self.type,
            "category": self.category,
            "constraints": {k: list(v) for k, v in self.constraints.items()},
        }
        if self.source is not None:
            row["source"] = self.source
        if self.synonym is not None:
            row["synonym"] = self.synonym
        return row


def _value(p: Product, attr: str) -> str:
    return str(getattr(p, attr))


def _size_words(spec: CategorySpec, size: str) -> str:
    if size.startswith("US "):
        return f"size {size[3:]}"
    if spec.size_label == "Size":
        return f"size {size}"
    return size


def _render(rng: random.Random, spec: CategorySpec, c: Mapping[str, str], noun: str) -> str:
    """Word order varies like real searches: "black leather boots women", "women's ..."."""
    g = c.get("gender", "")
    pre = [c.get(a, "") for a in ("brand", "feature", "color", "material")]
    if rng.random() < 0.35:  # attributes after the noun sometimes
        rng.shuffle(pre)
    size = _size_words(spec, c["size"]) if c.get("size") else ""
    style = rng.randrange(3)
    if style == 0:
        words = [_GENDER_WORD.get(g, ""), *pre, noun, size]
    elif style == 1:
        words = [*pre, noun, g, size]
    else:
        words = [*pre, noun, size, f"for {g}" if g else ""]
    return " ".join(" ".join(w for w in words if w).lower().split())


def misspell(rng: random.Random, text: str) -> str:
    """One typo (swap, drop, double or neighbor key) in one word of >= 4 letters."""
    words = text.split()
    idx = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not idx:
        raise DemoCatalogError(f"no word long enough to misspell in {text!r}")
    i = rng.choice(idx)
    w = words[i]
    for _ in range(20):
        op = rng.randrange(4)
        j = rng.randrange(1, len(w) - 1)
        if op == 0:
            new = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        elif op == 1:
            new = w[:j] + w[j + 1 :]
        elif op == 2:
            new = w[:j] + w[j] + w[j:]
        else:
            new = w[:j] + rng.choice(_NEIGHBORS.get(w[j], w[j]) or w[j]) + w[j + 1 :]
        if new != w:
            words[i] = new
            return " ".join(words)
    words[i] = w[0] + w[2:]  # dropping a letter always changes the word
    return " ".join(words)


_SPEC_VOCAB = {
    "type": "types",
    "brand": "brands",
    "color": "colors",
    "material": "materials",
    "size": "sizes",
    "gender": "genders",
    "feature": "features",
}


def _informative(p: Product, attrs: Iterable[str]) -> list[str]:
    """The attributes of p that can narrow a query (set, and not the same for all products:
    "women" says nothing about a dress)."""
    spec = CATEGORIES[p.category]
    return [
        a
        for a in attrs
        if len(getattr(spec, _SPEC_VOCAB[a])) > 1 and (a == "feature" or _value(p, a))
    ]


def _pick_attrs(rng: random.Random, p: Product, k: int, must: Sequence[str] = ()) -> dict[str, str]:
    """k constraint attributes taken from product p (always the ones in ``must``)."""
    avail = _informative(p, [a for a in QUERY_ATTRS if a not in must])
    chosen = list(must) + rng.sample(avail, max(0, min(k - len(must), len(avail))))
    out: dict[str, str] = {}
    for a in chosen:
        out[a] = rng.choice(p.features) if a == "feature" else _value(p, a)
    return out


class _Redraw(Exception):
    """This draw cannot make a query of the asked type; draw again."""


def _make_query(
    rng: random.Random,
    kind: str,
    products: Sequence[Product],
    by_cat: Mapping[str, list[Product]],
    syn_pairs: Sequence[tuple[CategorySpec, str]],
) -> tuple[str, str, dict[str, tuple[str, ...]], str | None, str | None]:
    """(text, category, constraints, source, synonym) for one query of type ``kind``."""
    if kind == "synonym":
        spec, syn = rng.choice(syn_pairs)
        accepted = spec.synonyms[syn]
        p = rng.choice([p for p in by_cat[spec.name] if not accepted or p.type in accepted])
        opts = _informative(p, ("brand", "color", "material", "gender", "feature"))
        k = rng.choice((0, 1, 1, 2)) if accepted else rng.choice((1, 1, 2))
        attrs = {
            a: (rng.choice(p.features) if a == "feature" else _value(p, a))
            for a in rng.sample(opts, k)
        }
        text = _render(rng, spec, attrs, syn)
        cons: dict[str, tuple[str, ...]] = {a: (v,) for a, v in attrs.items()}
        if accepted:
            cons["type"] = tuple(accepted)
        return text, spec.name, cons, None, syn
    base = kind
    if kind == "misspelled":  # a typo in a head or torso query
        base = "head" if rng.random() < 0.5 else "torso"
    p = rng.choice(products)
    spec = CATEGORIES[p.category]
    if base == "head":
        form = rng.random()
        if form < 0.6:
            attrs = {"type": p.type}
        else:
            attrs = {rng.choice(("brand", "feature")): ""}
            a = next(iter(attrs))
            attrs[a] = rng.choice(p.features) if a == "feature" else p.brand
    elif base == "torso":
        attrs = _pick_attrs(rng, p, rng.choice((2, 3)), must=("type",))
    else:  # tail: 4-5 attributes, including the size when the category has one
        must = ("type", "size") if p.size else ("type",)
        attrs = _pick_attrs(rng, p, rng.choice((4, 5)), must=must)
    noun = attrs.get("type", spec.noun)
    text = _render(rng, spec, attrs, noun)
    cons = {a: (v,) for a, v in attrs.items()}
    if kind == "misspelled":
        if not any(len(w) >= 4 and w.isalpha() for w in text.split()):
            raise _Redraw(text)
        return misspell(rng, text), spec.name, cons, text, None
    return text, spec.name, cons, None, None


def _type_counts(n_queries: int) -> dict[str, int]:
    counts = {k: round(n_queries * QUERY_MIX[k]) for k in QUERY_TYPES}
    counts["torso"] += n_queries - sum(counts.values())
    return counts


def generate_queries(
    products: Sequence[Product],
    n_queries: int = DEFAULT_QUERIES,
    seed: int = DEFAULT_SEED,
) -> list[DemoQuery]:
    """Queries of every type (QUERY_MIX), each built from a real product's attributes.

    Texts are unique; the type order is shuffled so ids do not reveal the type.
    """
    _check_sizes(n_queries, "n_queries", len(QUERY_TYPES))
    if not products:
        raise DemoCatalogError("no products to build queries from")
    rng = random.Random(f"demo-catalog/{seed}/queries")
    by_cat: dict[str, list[Product]] = defaultdict(list)
    for p in products:
        by_cat[p.category].append(p)
    # (category, synonym) pairs with at least one product the synonym stands for
    syn_pairs = [
        (c, w)
        for c in CATEGORIES.values()
        for w in sorted(c.synonyms)
        if any(not c.synonyms[w] or p.type in c.synonyms[w] for p in by_cat.get(c.name, ()))
    ]
    kinds = [k for k, n in _type_counts(n_queries).items() for _ in range(n)]
    rng.shuffle(kinds)
    seen: set[str] = set()
    out: list[DemoQuery] = []
    width = max(4, len(str(n_queries)))
    for kind in kinds:
        for _attempt in range(200):
            try:
                text, cat, cons, source, syn = _make_query(rng, kind, products, by_cat, syn_pairs)
            except _Redraw:
                continue
            if text not in seen:
                break
        else:
            raise DemoCatalogError(
                f"could not draw {n_queries} distinct queries from {len(products)} products;"
                " use fewer queries or more products"
            )
        seen.add(text)
        out.append(DemoQuery(f"q{len(out) + 1:0{width}d}", text, kind, cat, cons, source, syn))
    return out


# --------------------------------------------------------------------------- judgments


def grade(query: DemoQuery, product: Product) -> int | None:
    """The judgment rule for one pair: 3/2/1, or None for another category.

    The scalar reference of the rule; ``judge`` applies the same rule vectorized.
    """
    if product.category != query.category:
        return None
    c = query.constraints
    if "type" in c and product.type not in c["type"]:
        return 1
    others = [a for a in c if a != "type"]
    matched = sum(
        (bool(set(c[a]) & set(product.features)) if a == "feature" else _value(product, a) in c[a])
        for a in others
    )
    if matched == len(others):
        return 3
    if matched >= math.ceil(len(others) / 2):
        return 2
    return 1


class _Columns:
    """Products as integer-coded numpy columns, for one vectorized grade per query."""

    def __init__(self, products: Sequence[Product]) -> None:
        self.codes: dict[str, dict[str, int]] = {}
        self.cols: dict[str, np.ndarray] = {}
        for a in ("category", "type", "brand", "color", "material", "size", "gender"):
            vocab: dict[str, int] = {}
            self.cols[a] = np.fromiter(
                (vocab.setdefault(_value(p, a), len(vocab)) for p in products),
                dtype=np.int32,
                count=len(products),
            )
            self.codes[a] = vocab
        fvocab: dict[str, int] = {}
        for p in products:
            for f in p.features:
                fvocab.setdefault(f, len(fvocab))
        self.features = np.zeros((len(products), max(1, len(fvocab))), dtype=bool)
        for i, p in enumerate(products):
            for f in p.features:
                self.features[i, fvocab[f]] = True
        self.codes["feature"] = fvocab
        # inverted index over title + attribute tokens, for hard negatives
        self.postings: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(products):
            for t in set(tokens(p.title)) | set(tokens(p.attributes_text())):
                self.postings[t].append(i)

    def match(self, attr: str, values: Iterable[str]) -> np.ndarray:
        codes = [self.codes[attr][v] for v in values if v in self.codes[attr]]
        if attr == "feature":
            if not codes:
                return np.zeros(len(self.features), dtype=bool)
            return np.asarray(self.features[:, codes].any(axis=1))
        return np.isin(self.cols[attr], codes)

    def grades(self, q: DemoQuery) -> np.ndarray:
        """Per product: 3/2/1 as in ``grade``, -1 for other categories."""
        cat = self.cols["category"] == self.codes["category"].get(q.category, -1)
        type_ok = self.match("type", q.constraints["type"]) if "type" in q.constraints else cat
        others = [a for a in q.constraints if a != "type"]
        m = np.zeros(len(cat), dtype=np.int32)
        for a in others:
            m += self.match(a, q.constraints[a])
        need = math.ceil(len(others) / 2)
        g = np.where(cat, 1, -1)
        g = np.where(cat & type_ok & (m >= need), 2, g)
        g = np.where(cat & type_ok & (m == len(others)), 3, g)
        return g


_NEG_STOP = frozenset({"for", "in", "size", "s", "by", "with", "the", "and", "a"})


def judge(
    products: Sequence[Product],
    queries: Sequence[DemoQuery],
    seed: int = DEFAULT_SEED,
    max_grade1: int = 30,
    n_negatives: int = 10,
) -> list[Judgment]:
    """Judgments for every query: all grade 2-3 products, sampled grade 1 and hard negatives.

    Grade 1 keeps up to ``max_grade1`` same-category products drawn uniformly at random (the
    rest stay unjudged); grade 0 keeps the ``n_negatives`` other-category products that share
    the most query tokens in title + attribute list (ties broken at random).
    """
    _check_sizes(max_grade1, "max_grade1", 0)
    _check_sizes(n_negatives, "n_negatives", 0)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xC47A])))
    cols = _Columns(products)
    ids = np.array([p.id for p in products])
    out: list[Judgment] = []
    for q in queries:
        g = cols.grades(q)
        rows: list[tuple[int, int]] = [(int(i), int(g[i])) for i in np.flatnonzero(g >= 2)]
        ones = np.flatnonzero(g == 1)
        if len(ones) > max_grade1:
            ones = np.sort(rng.choice(ones, size=max_grade1, replace=False))
        rows += [(int(i), 1) for i in ones]
        if n_negatives:
            shared = np.zeros(len(products), dtype=np.int32)
            for t in set(tokens(q.text)) - _NEG_STOP:
                idx = cols.postings.get(t)
                if idx:
                    shared[idx] += 1
            shared[g >= 1] = -1
            cand = np.flatnonzero(shared > 0)
            if len(cand) < n_negatives:  # too few lexical look-alikes: add random ones
                rest = np.flatnonzero(shared == 0)
                cand = np.concatenate(
                    [
                        cand,
                        rng.choice(
                            rest, size=min(len(rest), n_negatives - len(cand)), replace=False
                        ),
                    ]
                )
            order = np.lexsort((rng.random(len(cand)), -shared[cand]))
            rows += [(int(i), 0) for i in cand[order[:n_negatives]]]
        rows.sort(key=lambda r: (-r[1], ids[r[0]]))
        out += [Judgment(q.id, str(ids[i]), float(gr)) for i, gr in rows]
    return out


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class DemoCatalog:
    """Products, queries and judgments of one seed; ``write_beir`` puts them on disk."""

    seed: int
    products: list[Product]
    queries: list[DemoQuery]
    judgments: list[Judgment]

    def summary(self) -> dict[str, object]:
        """Counts written to manifest.json (also handy in docs and logs)."""
        per_grade = {str(g): 0 for g in range(4)}
        for j in self.judgments:
            per_grade[str(int(j.grade))] += 1
        per_type = {k: 0 for k in QUERY_TYPES}
        for q in self.queries:
            per_type[q.type] += 1
        return {
            "generator": "indexing.demo_catalog",
            "seed": self.seed,
            "products": len(self.products),
            "categories": len(CATEGORIES),
            "queries": len(self.queries),
            "query_types": per_type,
            "judgments": len(self.judgments),
            "grades": per_grade,
        }

    def describe(self) -> str:
        """One line for logs: products, queries per type, judgments per grade."""
        s = self.summary()
        return (
            f"{s['products']} products, {s['queries']} queries {s['query_types']}, "
            f"{s['judgments']} judgments {s['grades']}"
        )


def build_demo_catalog(
    n_products: int = DEFAULT_PRODUCTS,
    n_queries: int = DEFAULT_QUERIES,
    seed: int = DEFAULT_SEED,
    max_grade1: int = 30,
    n_negatives: int = 10,
) -> DemoCatalog:
    """Generate products, queries and judgments from one seed (deterministic)."""
    products = generate_products(n_products, seed)
    queries = generate_queries(products, n_queries, seed)
    return DemoCatalog(
        seed, products, queries, judge(products, queries, seed, max_grade1, n_negatives)
    )


def _jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_beir(catalog: DemoCatalog, out_dir: str | Path) -> Path:
    """Write corpus.jsonl, queries.jsonl, qrels/test.tsv and manifest.json into out_dir.

    Files are written whole each time (never appended), so regenerating is idempotent.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DemoCatalogError(f"{out} exists and is not a directory")
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    _jsonl(out / "corpus.jsonl", (p.to_row() for p in catalog.products))
    _jsonl(out / "queries.jsonl", (q.to_row() for q in catalog.queries))
    with (out / "qrels" / "test.tsv").open("w", encoding="utf-8", newline="\n") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for j in catalog.judgments:
            fh.write(f"{j.query_id}\t{j.doc_id}\t{int(j.grade)}\n")
    (out / "manifest.json").write_text(
        json.dumps(catalog.summary(), indent=2) + "\n", encoding="utf-8"
    )
    return out
