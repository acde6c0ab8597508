"""Guards for semantic-cache hits: the near misses that cosine similarity cannot see.

A bag-of-tokens embedding such as wordllama scores "How do I X?" and "How do I not X?" at 0.98,
and "Paris to Berlin" against "Berlin to Paris" at 1.0. A semantic hit therefore needs the
similarity at or above the route's threshold AND no guard objecting:

- negation: a negation word in one question and not the other (English and a few European
  languages, each with its own markers);
- numbers: every number must match after normalisation ("1,000" = "1000" = "1k");
- units: every unit must match after normalisation ("km" = "kilometres", but not "miles");
- entities: capitalised names, quoted strings and code identifiers must appear in both;
- language: a question in another language (script, then stopwords) is not a hit;
- direction: a term that is the source in one ("from X", "X to") and the target in the other;
- operation: words from a closed list of opposed operations (encode/decode, sort/shuffle, ...)
  must match as sets, synonyms folded ("remove" = "delete").

The guards are deliberately literal: they cost recall on paraphrases that rename things
("USA" vs "United States") to keep false hits rare. Features are extracted once per text
(`question_features`), so a cached entry's features can be stored beside its vector.

`python -m bench.cache_guard` prints precision, recall and false-hit rate over the
labelled pairs in tests/gatez/data/cache_pairs.jsonl for thresholds 0.80 to 0.95.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.85


def _words(text: str) -> frozenset[str]:
    """A word list written as one string, to keep long vocabularies readable."""
    return frozenset(text.split())


class Reason(enum.Enum):
    """Why two questions are, or are not, the same for the cache."""

    HIT = "hit"
    LOW_SIMILARITY = "low_similarity"
    LANGUAGE = "language"
    NEGATION = "negation"
    NUMBERS = "numbers"
    UNITS = "units"
    ENTITIES = "entities"
    DIRECTION = "direction"
    OPERATION = "operation"


@dataclass(frozen=True, slots=True)
class QuestionFeatures:
    """What the guards compare, extracted once from one question's text."""

    language: str  # "en", "fr", ..., a script name ("cyrillic", "han", ...), or "" if unsure
    negated: bool
    numbers: frozenset[str]
    units: frozenset[str]
    entities: frozenset[str]  # lower-cased names, quoted strings and code identifiers
    words: frozenset[str]  # every lower-cased word token, for entity presence checks
    sources: frozenset[str]  # terms after "from" or before "to"
    targets: frozenset[str]  # terms after "to" / "into" / "->"
    operations: frozenset[str]  # canonical operation names


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of `compare_questions`: a hit or not, and the first reason that decided it."""

    hit: bool
    reason: Reason
    detail: str = ""


# --- tokenising -------------------------------------------------------------------------------

# Quoted strings and backticked code first, then numbers (with thousands separators and
# decimals), identifiers with dots/underscores/parentheses, words (with apostrophes), symbols.
_TOKEN = re.compile(
    r"""(?P<quoted>"[^"]{1,80}"|“[^”]{1,80}”|`[^`]{1,80}`|'[^'\s][^']{0,78}[^'\s]'(?!\w))
      |(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)
      |(?P<ident>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_]\w*\(\)|[A-Za-z]+_\w+
         |[a-z]+[A-Z]\w*)
      |(?P<word>[^\W\d_]+(?:['\u2019][^\W\d_]+)*)
      |(?P<symbol>->|→|°[CFcf](?![^\W\d_])|[$€£¥%°])
      |(?P<end>[.?!;:\n])""",
    re.VERBOSE,
)

_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "the a an is are was were be what how do does did can could should would will i you my "
        "your to of and in for with it this that why which when where who me we our please "
        "from on at by or if there their about into than"
    ),
    "fr": _words(
        "le la les est et des une un pour comment quel quelle quels je vous tu que qui dans avec "
        "du au aux ce cette mon ma mes sur pas ne est-ce c'est qu'est-ce peux puis faire"
    ),
    "de": _words(
        "der die das ist und wie ich ein eine einen nicht mit für was auf den dem kann sie es "
        "zu von im ist mein meine bitte warum welche wo wer kein keine"
    ),
    "es": _words(
        "el la los las es y cómo como qué que para una un por con del mi puedo en se lo "
        "cuál cual dónde por qué porque hay está son"
    ),
    "it": _words(
        "il lo gli è e come che per una un di con del mio posso sono della nel non cosa "
        "quale perché qual dove ho"
    ),
    "pt": _words(
        "o os é e como que para uma um com do da não meu posso em no na qual onde por "
        "porque você está são"
    ),
    "nl": _words(
        "de het een is en hoe ik van niet met voor wat kan je mijn waarom welke waar zijn op te"
    ),
}

_NEGATIONS = _words(
    # English; contractions are handled by the "n't" suffix test.
    "not no never without none nobody nothing neither nor cannot nowhere "
    # French
    "ne pas jamais sans aucun aucune rien n' "
    # German
    "nicht kein keine keinen keinem keiner nie niemals ohne nichts "
    # Spanish / Portuguese / Italian
    "nunca sin ningún ninguna ninguno jamás nada não sem nenhum nenhuma non mai senza "
    "nessuno nessuna niente "
    # Dutch
    "niet geen nooit zonder niets"
)
# "no" is a negation in English, Spanish and Italian alike; French elision "n'" is a prefix.
_NEGATION_PREFIXES = ("n'", "n\u2019")

# Scripts told apart by the first letters of their Unicode names.
_SCRIPTS = (
    ("CYRILLIC", "cyrillic"),
    ("GREEK", "greek"),
    ("ARABIC", "arabic"),
    ("HEBREW", "hebrew"),
    ("DEVANAGARI", "devanagari"),
    ("HANGUL", "hangul"),
    ("HIRAGANA", "japanese"),
    ("KATAKANA", "japanese"),
    ("CJK", "han"),
    ("THAI", "thai"),
)

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
} | {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "dozen": "12"}
_MULTIPLIERS = {"thousand": 1_000, "k": 1_000, "million": 1_000_000, "m": 1_000_000}
_MULTIPLIERS |= {"billion": 1_000_000_000, "bn": 1_000_000_000}

# Units by canonical name. Unambiguous names count anywhere; the short or everyday ones
# ("m", "s", "second", "day") only right after a number.
_UNITS: dict[str, tuple[str, ...]] = {
    "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
    "mile": ("mile", "miles", "mi"),
    "meter": ("meter", "meters", "metre", "metres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "inch": ("inch", "inches"),
    "foot": ("ft", "foot", "feet"),
    "yard": ("yard", "yards"),
    "kg": ("kg", "kgs", "kilogram", "kilograms", "kilo", "kilos"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "gram": ("gram", "grams"),
    "oz": ("oz", "ounce", "ounces"),
    "liter": ("liter", "liters", "litre", "litres"),
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "gallon": ("gallon", "gallons"),
    "cup": ("cup", "cups"),
    "celsius": ("celsius", "centigrade", "°c"),
    "fahrenheit": ("fahrenheit", "°f"),
    "kelvin": ("kelvin",),
    "ms": ("ms", "millisecond", "milliseconds"),
    "second": ("s", "sec", "secs", "second", "seconds"),
    "minute": ("min", "mins", "minute", "minutes"),
    "hour": ("h", "hr", "hrs", "hour", "hours"),
    "day": ("day", "days"),
    "week": ("week", "weeks"),
    "month": ("month", "months"),
    "year": ("year", "years", "yr", "yrs"),
    "byte": ("byte", "bytes"),
    "bit": ("bit", "bits"),
    "kb": ("kb", "kilobyte", "kilobytes"),
    "mb": ("mb", "megabyte", "megabytes"),
    "gb": ("gb", "gigabyte", "gigabytes"),
    "tb": ("tb", "terabyte", "terabytes"),
    "kib": ("kib",),
    "mib": ("mib",),
    "gib": ("gib",),
    "usd": ("usd", "$", "dollar", "dollars"),
    "eur": ("eur", "€", "euro", "euros"),
    "gbp": ("gbp", "£"),
    "jpy": ("jpy", "¥", "yen"),
    "inr": ("inr", "rupee", "rupees"),
    "percent": ("%", "percent", "pct"),
    "px": ("px", "pixel", "pixels"),
    "rem": ("rem",),
    "em": ("em",),
    "hz": ("hz", "hertz"),
    "khz": ("khz",),
    "mhz": ("mhz",),
    "ghz": ("ghz",),
    "watt": ("w", "watt", "watts"),
    "kw": ("kw", "kilowatt", "kilowatts"),
    "kwh": ("kwh",),
    "mph": ("mph",),
    "kmh": ("kph", "kmh"),
    "volt": ("v", "volt", "volts"),
    "mah": ("mah",),
    "calorie": ("calorie", "calories", "kcal", "cal"),
}
_UNIT_OF = {alias: canonical for canonical, aliases in _UNITS.items() for alias in aliases}
_UNITS_AFTER_NUMBER_ONLY = _words(
    "s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week "
    "weeks month months year years yr yrs w v em rem mi cup cups bit bits byte bytes "
    "cal pound pounds"
)
_CURRENCY_SYMBOLS = frozenset("$€£¥")

# Closed lists of opposed operations; words in one group are synonyms.
_OPERATIONS: dict[str, tuple[str, ...]] = {
    "sort": ("sort", "sorts", "sorted", "sorting"),
    "shuffle": ("shuffle", "shuffles", "shuffled", "randomize", "randomise"),
    "reverse": ("reverse", "reverses", "reversed", "reversing", "invert"),
    "encode": ("encode", "encodes", "encoded", "encoding"),
    "decode": ("decode", "decodes", "decoded", "decoding"),
    "encrypt": ("encrypt", "encrypts", "encrypted", "encryption"),
    "decrypt": ("decrypt", "decrypts", "decrypted", "decryption"),
    "compress": ("compress", "compresses", "compressed", "compression", "zip"),
    "decompress": ("decompress", "decompressed", "decompression", "unzip"),
    "serialize": ("serialize", "serialise", "serialized", "serialization", "stringify"),
    "deserialize": ("deserialize", "deserialise", "deserialized", "deserialization"),
    "add": ("add", "adds", "adding", "insert", "append"),
    "remove": ("remove", "removes", "removing", "delete", "deletes", "deleting"),
    "upload": ("upload", "uploads", "uploading"),
    "download": ("download", "downloads", "downloading"),
    "import": ("import", "imports", "importing"),
    "export": ("export", "exports", "exporting"),
    "install": ("install", "installs", "installing"),
    "uninstall": ("uninstall", "uninstalls", "uninstalling"),
    "enable": ("enable", "enables", "enabling", "activate"),
    "disable": ("disable", "disables", "disabling", "deactivate"),
    "start": ("start", "starts", "starting", "launch"),
    "stop": ("stop", "stops", "stopping", "terminate"),
    "increase": ("increase", "increases", "increasing"),
    "decrease": ("decrease", "decreases", "decreasing", "reduce"),
    "max": ("max", "maximum", "largest", "biggest", "highest", "longest"),
    "min": ("minimum", "smallest", "lowest", "shortest"),
    "ascending": ("ascending", "asc"),
    "descending": ("descending", "desc"),
    "upper": ("uppercase", "upper"),
    "lower": ("lowercase", "lower"),
    "first": ("first", "earliest"),
    "last": ("last", "latest"),
    "buy": ("buy", "buying", "purchase"),
    "sell": ("sell", "selling"),
    "merge": ("merge", "merging", "combine"),
    "split": ("split", "splitting"),
    "before": ("before",),
    "after": ("after",),
    "sum": ("sum", "summing"),
    "average": ("average", "averages", "avg"),
    "median": ("median",),
    "vertical": ("vertical", "vertically"),
    "horizontal": ("horizontal", "horizontally"),
}
_OPERATION_OF = {
    alias: canonical for canonical, aliases in _OPERATIONS.items() for alias in aliases
}

_FROM_WORDS = _words("from von desde depuis")
_TO_WORDS = _words("to into towards nach vers hacia -> →")

_DETERMINERS = _words("a an the my your our their this that these those some")


def question_features(text: str) -> QuestionFeatures:
    """Extract what the guards compare from one question."""
    text = unicodedata.normalize("NFKC", text)
    tokens: list[tuple[str, str]] = []  # (kind, raw text)
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group()))

    words = [raw.lower() for kind, raw in tokens if kind == "word"]
    language = _language(text, words)

    negated = any(
        w in _NEGATIONS
        or w.endswith(("n't", "n\u2019t"))
        or w.startswith(_NEGATION_PREFIXES)
        or (w == "no" and language in {"en", "es", "it", ""})
        for w in words
    )

    numbers, units = _numbers_and_units(tokens)
    entities = _entities(tokens, capitalised_names=language != "de")
    sources, targets = _direction(tokens)
    operations = frozenset(_OPERATION_OF[w] for w in words if w in _OPERATION_OF)
    return QuestionFeatures(
        language=language,
        negated=negated,
        numbers=numbers,
        units=units,
        entities=entities,
        words=frozenset(words) | frozenset(_strip_possessive(w) for w in words),
        sources=sources,
        targets=targets,
        operations=operations,
    )


def _language(text: str, words: list[str]) -> str:
    """Script if not Latin; else the language whose stopwords are most frequent, "" on a tie."""
    counts: dict[str, int] = {}
    letters = 0
    for char in text:
        if not char.isalpha():
            continue
        letters += 1
        if char.isascii():
            continue
        name = unicodedata.name(char, "")
        for prefix, script in _SCRIPTS:
            if name.startswith(prefix):
                counts[script] = counts.get(script, 0) + 1
                break
    if counts:
        script, count = max(counts.items(), key=lambda item: item[1])
        # A few foreign characters in Latin text (a name, a symbol) do not change its language.
        if count * 4 >= letters:
            return script
    scores = {lang: sum(w in stops for w in words) for lang, stops in _STOPWORDS.items()}
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    best, best_score = ranked[0]
    if best_score == 0 or best_score == ranked[1][1]:
        return ""
    return best


def _normalise_number(raw: str) -> float:
    return float(raw.replace(",", ""))


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _numbers_and_units(tokens: list[tuple[str, str]]) -> tuple[frozenset[str], frozenset[str]]:
    numbers: set[str] = set()
    units: set[str] = set()
    pending: float | None = None  # the last number, until we know whether a multiplier follows
    for kind, raw in tokens:
        lower = raw.lower()
        if kind == "number" or (kind == "word" and lower in _NUMBER_WORDS):
            if pending is not None:
                numbers.add(_format_number(pending))
            pending = _normalise_number(raw) if kind == "number" else float(_NUMBER_WORDS[lower])
            continue
        if pending is not None and kind == "word":
            # "5k", "2 million"; "1st" and "3rd" are ordinals of the number itself.
            if lower in _MULTIPLIERS:
                numbers.add(_format_number(pending * _MULTIPLIERS[lower]))
                pending = None
                continue
            if lower in {"st", "nd", "rd", "th"}:
                continue
            if lower in _UNIT_OF:
                units.add(_UNIT_OF[lower])
        if pending is not None:
            numbers.add(_format_number(pending))
            pending = None
        if (kind == "symbol" and lower in _UNIT_OF) or (
            kind == "word"
            and lower in _UNIT_OF
            and lower not in _UNITS_AFTER_NUMBER_ONLY
            # Unambiguous unit names count anywhere ("in miles" vs "in kilometres"), but short
            # abbreviations must not be ordinary words (e.g. the French "min").
            and (len(lower) > 2 or lower in {"km", "kg", "mb", "gb", "kb", "tb", "ms", "ml"})
        ):
            units.add(_UNIT_OF[lower])
    if pending is not None:
        numbers.add(_format_number(pending))
    return frozenset(numbers), frozenset(units)


def _strip_possessive(word: str) -> str:
    for suffix in ("'s", "\u2019s", "s'", "s\u2019"):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            return word[: -len(suffix)] + ("s" if suffix.startswith("s") else "")
    return word


def _entities(tokens: list[tuple[str, str]], *, capitalised_names: bool) -> frozenset[str]:
    """Quoted strings, code identifiers, and capitalised words not at a sentence start."""
    entities: set[str] = set()
    sentence_start = True
    for kind, raw in tokens:
        if kind == "end":
            sentence_start = True
            continue
        if kind == "quoted":
            entities.add(raw[1:-1].strip().lower())
        elif kind == "ident":
            entities.add(raw.lower().removesuffix("()"))
        elif (
            kind == "word"
            and capitalised_names
            and raw[0].isupper()
            and raw != "I"
            # Units ("USD", "GB") are the unit guard's to compare.
            and raw.lower() not in _UNIT_OF
        ):
            # An all-capitals acronym (AWS, JSON) is a name even at a sentence start; a
            # capitalised first word usually is not.
            acronym = len(raw) > 1 and raw.isupper()
            mixed = any(c.isupper() for c in raw[1:])
            if not sentence_start or acronym or mixed:
                entities.add(_strip_possessive(raw.lower()))
        if kind != "symbol":
            sentence_start = False
    return frozenset(entities)


def _direction(tokens: list[tuple[str, str]]) -> tuple[frozenset[str], frozenset[str]]:
    """Terms marked as a source ("from X", "X to ...") or a target ("to X", "into X")."""
    content = [
        (raw.lower(), kind)
        for kind, raw in tokens
        if kind in {"word", "ident", "quoted", "number", "symbol"}
    ]

    def term_after(index: int) -> str | None:
        index += 1
        while index < len(content) and content[index][0] in _DETERMINERS:
            index += 1
        return _strip_possessive(content[index][0]) if is_term(index) else None

    def is_term(index: int) -> bool:
        if not 0 <= index < len(content):
            return False
        word, kind = content[index]
        if kind == "symbol":
            return word in _CURRENCY_SYMBOLS
        return word not in _STOPWORDS["en"] and word not in _FROM_WORDS and word not in _TO_WORDS

    sources: set[str] = set()
    targets: set[str] = set()
    for index, (word, _) in enumerate(content):
        after = term_after(index)
        if word in _FROM_WORDS and after is not None:
            sources.add(after)
        elif word in _TO_WORDS:
            if after is not None:
                targets.add(after)
            if is_term(index - 1):
                sources.add(_strip_possessive(content[index - 1][0]))
    return frozenset(sources), frozenset(targets)


def guard_mismatch(a: QuestionFeatures, b: QuestionFeatures) -> Verdict | None:
    """The first guard that tells the two questions apart, or None if none does."""
    if a.language and b.language and a.language != b.language:
        return Verdict(False, Reason.LANGUAGE, f"{a.language} vs {b.language}")
    if a.negated != b.negated:
        return Verdict(False, Reason.NEGATION, "negated" if a.negated else "not negated")
    if a.numbers != b.numbers:
        return Verdict(False, Reason.NUMBERS, _difference(a.numbers, b.numbers))
    if a.units != b.units:
        return Verdict(False, Reason.UNITS, _difference(a.units, b.units))
    # Presence rather than set equality: a name may sit at a sentence start on one side.
    missing_in_b = {e for e in a.entities if not _present(e, b)}
    missing_in_a = {e for e in b.entities if not _present(e, a)}
    if missing_in_a or missing_in_b:
        return Verdict(False, Reason.ENTITIES, _difference(missing_in_b, missing_in_a))
    swapped = (a.sources & b.targets) | (a.targets & b.sources)
    if swapped:
        return Verdict(False, Reason.DIRECTION, ", ".join(sorted(swapped)))
    if a.operations != b.operations:
        return Verdict(False, Reason.OPERATION, _difference(a.operations, b.operations))
    return None


def _present(entity: str, other: QuestionFeatures) -> bool:
    if entity in other.entities or entity in other.words:
        return True
    # A multi-word quoted string or dotted identifier: every one of its words must be there.
    parts = re.findall(r"[^\W_]+", entity)
    return bool(parts) and all(p in other.words or p in other.entities for p in parts)


def _difference(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> str:
    return f"{sorted(a - b)} vs {sorted(b - a)}"


def compare_questions(
    a: str | QuestionFeatures,
    b: str | QuestionFeatures,
    similarity: float,
    threshold: float = DEFAULT_THRESHOLD,
) -> Verdict:
    """Whether a cached answer to `a` may answer `b`, and why (or why not).

    `similarity` is the cosine similarity of the two questions' embeddings; `threshold` the
    route's minimum. Pass precomputed `QuestionFeatures` to avoid re-extracting a cached entry's.
    """
    if similarity < threshold:
        return Verdict(False, Reason.LOW_SIMILARITY, f"{similarity:.3f} < {threshold:.3f}")
    fa = a if isinstance(a, QuestionFeatures) else question_features(a)
    fb = b if isinstance(b, QuestionFeatures) else question_features(b)
    mismatch = guard_mismatch(fa, fb)
    return mismatch if mismatch is not None else Verdict(True, Reason.HIT)


def same_question(a: str, b: str, similarity: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """True when `b` may be served `a`'s cached answer: similar enough and no guard objects."""
    return compare_questions(a, b, similarity, threshold).hit
