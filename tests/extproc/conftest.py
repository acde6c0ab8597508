"""Fixtures for data-plane tests."""

from __future__ import annotations

import pytest

from extproc.token_count import TokenCounter


@pytest.fixture(scope="session")
def tokens() -> TokenCounter:
    """OpenAI's tokenizer, both encodings loaded (about half a second, once per session)."""
    counter = TokenCounter()
    counter.load("o200k_base")
    counter.load("cl100k_base")
    return counter
