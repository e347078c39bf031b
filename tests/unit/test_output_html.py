"""What HTML an output may carry once rendered: nothing that acts, positions or restyles."""

from __future__ import annotations

from ui.components.output_view import clean_html


def test_style_class_scripts_and_handlers_are_dropped() -> None:
    dirty = (
        '<div style="position:fixed;inset:0" class="fixed inset-0" onclick="x()">overlay</div>'
        '<script>alert(1)</script><img src="javascript:alert(1)" onerror="x()">'
        '<a href="javascript:alert(1)">js</a><form action="https://evil.example"><button>go</button></form>'
    )
    clean = clean_html(dirty)
    for gone in ("style=", "fixed", "onclick", "<script", "onerror", "javascript:", "<form", "<button"):
        assert gone not in clean, (gone, clean)
    assert "overlay" in clean and "js" in clean and "go" in clean


def test_highlighted_code_and_plain_markup_stay() -> None:
    html = '<div class="codehilite"><pre><span class="k">def</span> <span class="nf">f</span></pre></div><b>bold</b>'
    clean = clean_html(html)
    assert 'class="codehilite"' in clean and 'class="k"' in clean and "<b>bold</b>" in clean
    assert 'rel="noopener noreferrer nofollow"' in clean_html('<a href="https://example.com">x</a>')


def test_the_word_diff_marks_words_and_escapes_everything() -> None:
    from ui.components.output_view import word_diff

    shown = word_diff("the quick brown fox", "the slow brown <b>fox</b>")
    assert '<del class="sd-del">quick</del><ins class="sd-ins">slow</ins>' in shown
    assert "&lt;b&gt;fox&lt;/b&gt;" in shown and "<b>" not in shown
    assert shown.startswith("the ")
    assert word_diff("same text", "same text") == "same text"
