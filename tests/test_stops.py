"""Stop strings are never emitted, however the text is split into pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.generation.engine.stops import StopMatcher

pytestmark = pytest.mark.timeout(60)

alphabet = st.sampled_from("ab c\n")


def expected(text: str, stops: list[str]) -> str:
    cuts = [i for stop in stops if stop and (i := text.find(stop)) >= 0]
    return text[: min(cuts)] if cuts else text


def run(pieces: list[str], stops: list[str]) -> str:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(piece) for piece in pieces)
    return out + matcher.flush()


@given(
    pieces=st.lists(st.text(alphabet, max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3),
)
def test_output_is_the_text_up_to_the_first_stop_for_any_split(
    pieces: list[str], stops: list[str]
) -> None:
    assert run(pieces, stops) == expected("".join(pieces), stops)


@given(pieces=st.lists(st.text(alphabet, max_size=4), max_size=12))
def test_released_text_never_contains_a_stop_even_before_flush(pieces: list[str]) -> None:
    matcher = StopMatcher(["ab c"])
    released = ""
    for piece in pieces:
        released += matcher.feed(piece)
        assert "ab c" not in released


def test_a_stop_split_across_tokens_is_held_then_dropped() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("hello E") == "hello "
    assert matcher.feed("N") == ""
    assert matcher.feed("D and more") == ""
    assert matcher.stopped
    assert matcher.flush() == ""


def test_held_text_that_turns_out_not_to_be_a_stop_is_released() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("the E") == "the "
    assert matcher.feed("nd") == "End"
    assert matcher.feed("E") == ""
    assert matcher.flush() == "E"


def test_no_stops_passes_everything_through() -> None:
    matcher = StopMatcher(["", ""])
    assert matcher.feed("abc") == "abc"
    assert matcher.flush() == ""


def test_a_longer_stop_starting_earlier_wins_over_a_shorter_one_found_first() -> None:
    # Found by hypothesis: "a" matches at 1, but "bab\n" starts at 0 and completes later.
    assert run(["bab", "\n"], ["a", "bab\n"]) == ""
    assert run(["bab"], ["a", "bab\n"]) == "b"  # it never completed: "a" stands
