"""The reply keyword matcher (core.replies): per-language keywords, case, accents, punctuation and spaces ignored;
an opt-out keyword counts as the first word, an opt-in keyword only alone. Pure: no AWS."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.receipts import Route, route_token
from core.replies import (
    Intent,
    _decode,
    get_url,
    keyword_table,
    match_keyword,
    words_of,
)
from core.texts import available_languages, load_language

OPT_OUT = sorted({k for lang in available_languages() for k in load_language(lang).replies.opt_out})
OPT_IN = sorted({k for lang in available_languages() for k in load_language(lang).replies.opt_in})
# What may surround a keyword without changing it: spaces, punctuation, emoji.
NOISE = st.text(alphabet=st.sampled_from(" \t\n.,;:!?¿¡-_'\"()«»…/*#🙏"), max_size=6)


def vary_case(keyword: str, flips: list[bool]) -> str:
    flips = (flips + [False] * len(keyword))[: len(keyword)]
    return "".join(ch.swapcase() if flip else ch for ch, flip in zip(keyword, flips, strict=True))


def strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("STOP", Intent.OPT_OUT),
        ("stop.", Intent.OPT_OUT),
        ("Stop please", Intent.OPT_OUT),
        ("ARRÊT", Intent.OPT_OUT),
        ("arret", Intent.OPT_OUT),
        ("Arrêter svp", Intent.OPT_OUT),
        ("Arrêtez svp", Intent.OPT_OUT),  # the polite imperative a family writes
        ("Désabonnez-moi", Intent.OPT_OUT),
        ("STOPP", Intent.OPT_OUT),
        ("unsubscribe!", Intent.OPT_OUT),
        ("opt-out", Intent.OPT_OUT),
        ("Opt out", Intent.OPT_OUT),
        ("  «Désabonner»  ", Intent.OPT_OUT),
        ("OUI", Intent.OPT_IN),
        ("oui !", Intent.OPT_IN),
        ("Start", Intent.OPT_IN),
        ("yes.", Intent.OPT_IN),
    ],
)
def test_keywords_in_every_language_pack(text: str, intent: Intent) -> None:
    found = match_keyword(text)
    assert found is not None and found.intent is intent


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "...",
        "Please stop",  # the keyword is not the first word
        "Je veux arrêter",
        "Oui merci",  # an opt-in keyword with more words is not an opt-in
        "oui, nous viendrons",
        "Stopper",  # another word that begins with a keyword
        "S T O P",
        "Merci",
        "Non",
    ],
)
def test_other_texts_are_no_keyword(text: str) -> None:
    assert match_keyword(text) is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Arrèt !", ("arret",)),  # an accent no pack lists (a grave for a circumflex): folded away all the same
        ("DÉSABONNÉR", ("desabonner",)),
        ("Ôpt-oût", ("opt", "out")),
    ],
)
def test_accents_a_pack_does_not_list_are_folded_so_the_keyword_still_counts(text: str, words: tuple[str, ...]) -> None:
    assert words_of(text) == words
    found = match_keyword(text)
    assert found is not None and found.intent is Intent.OPT_OUT


def test_no_keyword_means_opt_out_in_one_pack_and_opt_in_in_another() -> None:
    table = keyword_table()  # raises ValueError on a conflict
    assert {m.intent for m in table.values()} == {Intent.OPT_OUT, Intent.OPT_IN}
    assert words_of("ARRÊT") in table and words_of("OUI") in table


@given(keyword=st.sampled_from(OPT_OUT), before=NOISE, after=NOISE, flips=st.lists(st.booleans(), max_size=12))
@settings(max_examples=300)
def test_an_opt_out_keyword_counts_whatever_its_case_accents_and_surrounding_punctuation(
    keyword: str, before: str, after: str, flips: list[bool]
) -> None:
    for written in (vary_case(keyword, flips), strip_accents(vary_case(keyword, flips))):
        found = match_keyword(before + written + after)
        assert found is not None and found.intent is Intent.OPT_OUT, (before, written, after)


@given(
    keyword=st.sampled_from(OPT_OUT),
    rest=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzéèàç", min_size=1, max_size=8), max_size=4),
)
def test_an_opt_out_keyword_followed_by_other_words_still_counts(keyword: str, rest: list[str]) -> None:
    found = match_keyword(" ".join([keyword, *rest]))
    assert found is not None and found.intent is Intent.OPT_OUT


@given(keyword=st.sampled_from(OPT_IN), before=NOISE, after=NOISE, flips=st.lists(st.booleans(), max_size=12))
def test_an_opt_in_keyword_alone_counts_whatever_its_case_and_punctuation(
    keyword: str, before: str, after: str, flips: list[bool]
) -> None:
    found = match_keyword(before + vary_case(keyword, flips) + after)
    assert found is not None and found.intent is Intent.OPT_IN


@given(
    keyword=st.sampled_from(OPT_IN),
    word=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
)
def test_an_opt_in_keyword_with_another_word_is_not_an_opt_in(keyword: str, word: str) -> None:
    found = match_keyword(f"{keyword} {word}")
    assert found is None or found.intent is Intent.OPT_OUT  # "start stop" is nothing; nothing opts in


@given(text=st.text(max_size=300))
def test_any_text_matches_at_most_as_its_first_words_say(text: str) -> None:
    found = match_keyword(text)
    words = words_of(text)
    if found is not None and found.intent is Intent.OPT_OUT:
        keyword_words = words_of(found.keyword)
        assert words[: len(keyword_words)] == keyword_words
    if found is not None and found.intent is Intent.OPT_IN:
        assert words == words_of(found.keyword)


def test_ucs2_bytes_are_decoded_as_utf16_big_endian() -> None:
    assert _decode("ARRÊT".encode("utf-16-be"), "2", "") == "ARRÊT"
    assert _decode("ARRÊT".encode("utf-16-be"), "2", "UTF-16BE") == "ARRÊT"
    assert _decode("ARRÊT".encode("utf-16-be"), "0", "UCS-2") == "ARRÊT"
    # A Kannel that recoded UCS-2 to UTF-8 (mo-recode) names UTF-8: the charset wins over the coding.
    assert _decode("ARRÊT".encode(), "2", "UTF-8") == "ARRÊT"
    assert _decode("Arrêt".encode("latin-1"), "0", "") == "Arrêt"  # not UTF-8: Latin-1
    assert _decode(b"\x00S\x00T\x00O", "2", "") == "STO"


def test_the_kannel_get_url_uses_the_escapes_the_endpoint_reads_and_the_inbound_token() -> None:
    url = get_url("https://abc.lambda-url.eu-west-1.on.aws/", "t/k+n")
    token = route_token("t/k+n", Route.INBOUND)
    assert url == (
        f"https://abc.lambda-url.eu-west-1.on.aws/inbound?token={token}&from=%p&to=%P&text=%a&coding=%c&charset=%C"
    )
    assert token != route_token("t/k+n", Route.ORANGE) and "t/k+n" not in url
