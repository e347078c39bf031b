"""Credentials of the model endpoint kept out of what is shown and logged: the key scrubber (exact, other
case, cut short), URLs in log lines, and a base URL with a user name or password refused by the settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.llm.redact import KeyScrubber, redact_url, redact_urls, split_query
from engine.settings import SettingsError, from_env

KEY = "sk-test-SECRET-1234567890abcdef"


@pytest.mark.parametrize(
    "echo",
    [KEY, KEY.upper(), KEY.lower(), KEY[:20], KEY[-12:], KEY[5:25].upper(), f"{KEY[:10]}...{KEY[-10:]}"],
    ids=["exact", "upper", "lower", "prefix", "suffix", "middle-upper", "elided"],
)
def test_the_key_scrubber_masks_the_key_in_any_case_and_cut_short(echo: str) -> None:
    scrubbed = KeyScrubber(KEY)(f"Incorrect API key provided: {echo}. See the docs.")
    assert scrubbed.startswith("Incorrect API key provided: ***")
    assert scrubbed.endswith(". See the docs.")
    lowered = scrubbed.lower()
    assert not any(KEY.lower()[i : i + 8] in lowered for i in range(len(KEY) - 7)), scrubbed


def test_the_key_scrubber_leaves_other_text_alone() -> None:
    scrub = KeyScrubber(KEY)
    assert scrub("the model endpoint refused the request (HTTP 400: bad model)") == (
        "the model endpoint refused the request (HTTP 400: bad model)"
    )
    assert KeyScrubber("")("anything sk-test") == "anything sk-test"


def test_urls_in_text_lose_their_user_info_and_query_values() -> None:
    line = 'HTTP Request: POST https://bob:hunter2@api.example/v1/chat/completions?sig=abc123&x "HTTP/1.1 200 OK"'
    assert redact_urls(line) == (
        'HTTP Request: POST https://***@api.example/v1/chat/completions?sig=***&x "HTTP/1.1 200 OK"'
    )
    assert redact_url("https://bob:hunter2@api.example:8443/v1?sig=abc#f") == "https://api.example:8443/v1"
    assert split_query("https://h/v1?sig=a%2Fb&api-version=2") == ("https://h/v1", {"sig": "a/b", "api-version": "2"})


def test_a_base_url_with_a_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({"STEPDECK_LLM_BASE_URL": "https://bob:hunter2@api.example/v1"})
    assert "STEPDECK_LLM_API_KEY" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        from_env({"STEPDECK_LLM_BASE_URL": "ftp://bob:hunter2@api.example/v1"})
    assert "hunter2" not in str(caught.value)


_LOG_LINE = """
import logging, sys
from engine.llm.redact import install_log_redaction
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
install_log_redaction()
logging.getLogger("httpx2").info('HTTP Request: %s %s "%s"', "POST", "https://u:pw-SECRET@h/v1/x?sig=SIG-SECRET", "200")
"""


def test_every_log_record_of_the_process_has_its_urls_redacted() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _LOG_LINE], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'httpx2 HTTP Request: POST https://***@h/v1/x?sig=*** "200"'
