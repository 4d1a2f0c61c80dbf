"""Language codes: the ISO 639-1 set, the languages Whisper has a token for, and text language detection.

- ``ISO_639_1`` maps every two-letter ISO 639-1 code (184, ``sh`` included) to its
  English name. A dataset's ``language`` must be one of these, in any case.
- ``WHISPER`` holds the codes the default speech base model (Whisper) has a
  language token for. Whisper spells Javanese ``jw``; here it is the ISO ``jv``.
- ``likely_code`` turns what people write instead (``en-US``, ``English``,
  ``eng``, ``iw``) into the code to suggest in a hint.
- ``detect`` names the language of a transcript with py3langid (its model ships
  with the package and is loaded once, on first use), choosing only among the
  languages Whisper knows, and says how sure it is (0..1).
"""

from __future__ import annotations

from functools import cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

# fmt: off
ISO_639_1: dict[str, str] = {
    "aa": "Afar", "ab": "Abkhazian", "ae": "Avestan", "af": "Afrikaans", "ak": "Akan", "am": "Amharic",
    "an": "Aragonese", "ar": "Arabic", "as": "Assamese", "av": "Avaric", "ay": "Aymara", "az": "Azerbaijani",
    "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian", "bi": "Bislama", "bm": "Bambara", "bn": "Bengali",
    "bo": "Tibetan", "br": "Breton", "bs": "Bosnian", "ca": "Catalan", "ce": "Chechen", "ch": "Chamorro",
    "co": "Corsican", "cr": "Cree", "cs": "Czech", "cu": "Church Slavic", "cv": "Chuvash", "cy": "Welsh",
    "da": "Danish", "de": "German", "dv": "Divehi", "dz": "Dzongkha", "ee": "Ewe", "el": "Greek",
    "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "ff": "Fulah", "fi": "Finnish", "fj": "Fijian", "fo": "Faroese", "fr": "French", "fy": "Western Frisian",
    "ga": "Irish", "gd": "Scottish Gaelic", "gl": "Galician", "gn": "Guarani", "gu": "Gujarati", "gv": "Manx",
    "ha": "Hausa", "he": "Hebrew", "hi": "Hindi", "ho": "Hiri Motu", "hr": "Croatian", "ht": "Haitian Creole",
    "hu": "Hungarian", "hy": "Armenian", "hz": "Herero",
    "ia": "Interlingua", "id": "Indonesian", "ie": "Interlingue",
    "ig": "Igbo", "ii": "Sichuan Yi", "ik": "Inupiaq", "io": "Ido", "is": "Icelandic", "it": "Italian",
    "iu": "Inuktitut", "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kg": "Kongo", "ki": "Kikuyu",
    "kj": "Kuanyama", "kk": "Kazakh", "kl": "Kalaallisut", "km": "Khmer", "kn": "Kannada", "ko": "Korean",
    "kr": "Kanuri", "ks": "Kashmiri", "ku": "Kurdish", "kv": "Komi", "kw": "Cornish", "ky": "Kyrgyz", "la": "Latin",
    "lb": "Luxembourgish", "lg": "Ganda", "li": "Limburgan", "ln": "Lingala", "lo": "Lao", "lt": "Lithuanian",
    "lu": "Luba-Katanga", "lv": "Latvian", "mg": "Malagasy", "mh": "Marshallese", "mi": "Maori", "mk": "Macedonian",
    "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese",
    "my": "Burmese", "na": "Nauru", "nb": "Norwegian Bokmål", "nd": "North Ndebele", "ne": "Nepali",
    "ng": "Ndonga", "nl": "Dutch", "nn": "Norwegian Nynorsk", "no": "Norwegian", "nr": "South Ndebele",
    "nv": "Navajo", "ny": "Chichewa", "oc": "Occitan", "oj": "Ojibwa", "om": "Oromo",
    "or": "Oriya", "os": "Ossetian", "pa": "Punjabi", "pi": "Pali", "pl": "Polish", "ps": "Pashto",
    "pt": "Portuguese", "qu": "Quechua", "rm": "Romansh", "rn": "Rundi", "ro": "Romanian", "ru": "Russian",
    "rw": "Kinyarwanda", "sa": "Sanskrit", "sc": "Sardinian", "sd": "Sindhi", "se": "Northern Sami", "sg": "Sango",
    "sh": "Serbo-Croatian", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "sm": "Samoan", "sn": "Shona",
    "so": "Somali", "sq": "Albanian", "sr": "Serbian", "ss": "Swati", "st": "Southern Sotho", "su": "Sundanese",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "tg": "Tajik", "th": "Thai",
    "ti": "Tigrinya", "tk": "Turkmen", "tl": "Tagalog", "tn": "Tswana", "to": "Tongan",
    "tr": "Turkish", "ts": "Tsonga", "tt": "Tatar", "tw": "Twi", "ty": "Tahitian", "ug": "Uyghur", "uk": "Ukrainian",
    "ur": "Urdu", "uz": "Uzbek", "ve": "Venda", "vi": "Vietnamese", "vo": "Volapük", "wa": "Walloon", "wo": "Wolof",
    "xh": "Xhosa", "yi": "Yiddish", "yo": "Yoruba", "za": "Zhuang", "zh": "Chinese", "zu": "Zulu",
}
# fmt: on

# fmt: off
WHISPER = frozenset({
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da", "de", "el", "en",
    "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "he", "hi", "hr", "ht", "hu", "hy", "id", "is", "it",
    "ja", "jv", "ka", "kk", "km", "kn", "ko", "la", "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr",
    "ms", "mt", "my", "ne", "nl", "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl",
    "sn", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz", "vi",
    "yi", "yo", "zh",
})
# fmt: on

# Withdrawn two-letter codes and common three-letter (ISO 639-2) codes and names, for hints only.
_OTHER_SPELLINGS = {
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro",
    "eng": "en", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "ita": "it", "por": "pt",
    "rus": "ru", "zho": "zh", "chi": "zh", "jpn": "ja", "kor": "ko", "ara": "ar", "hin": "hi", "nld": "nl",
    "dut": "nl", "pol": "pl", "tur": "tr", "swe": "sv", "ukr": "uk", "vie": "vi", "ces": "cs", "cze": "cs",
    "ell": "el", "gre": "el", "heb": "he", "ind": "id", "tha": "th", "fas": "fa", "per": "fa", "ron": "ro",
    "rum": "ro", "hun": "hu", "fin": "fi", "dan": "da", "nor": "no", "cat": "ca", "ben": "bn", "urd": "ur",
    "castilian": "es", "mandarin": "zh", "cantonese": "zh", "farsi": "fa", "flemish": "nl", "filipino": "tl",
    "myanmar": "my", "sinhalese": "si", "moldovan": "ro", "valencian": "ca", "nynorsk": "nn", "bokmal": "nb",
}  # fmt: skip
_BY_NAME = {name.lower(): code for code, name in ISO_639_1.items()}


def normalise(value: str) -> str | None:
    """The ISO 639-1 code ``value`` spells (any case, surrounding spaces ignored), or None."""
    code = value.strip().lower()
    return code if code in ISO_639_1 else None


def likely_code(value: str) -> str | None:
    """The ISO 639-1 code someone probably meant by ``value`` (a tag with a region, a name, a 3-letter code)."""
    text = value.strip().lower()
    head = text.replace("_", "-").split("-")[0]
    if head != text and head in ISO_639_1:
        return head
    for candidate in (text, head):
        if candidate in _BY_NAME:
            return _BY_NAME[candidate]
        if candidate in _OTHER_SPELLINGS:
            return _OTHER_SPELLINGS[candidate]
    return None


@cache
def _identifier() -> LanguageIdentifier:
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(sorted(WHISPER & set(identifier.labels)))
    return identifier


def detect(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, confidence 0..1) of ``text``'s language, among the languages Whisper knows."""
    code, confidence = _identifier().classify(text)
    return str(code), float(confidence)
