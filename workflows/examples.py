"""Step functions for the bundled example workflows.

They run offline and are deterministic for a given attempt, but every attempt number shows up in the
output, so a retry visibly produces fresh work. Short sleeps keep runs quick yet watchable.
"""

import asyncio
import time
from typing import Any

_TONES = {
    "friendly": "Let's be honest:",
    "formal": "It should be noted that",
    "playful": "Plot twist:",
}
_ANGLES = ["the big picture", "a worked example", "common mistakes", "a short history", "the numbers"]
_SENTENCES = [
    "{opener} {topic} is easier to understand through {angle}.",
    "Most teams meet {topic} long before they have a name for it.",
    "The first step is small, and it is usually the one people skip.",
    "Done well, {topic} saves more time than it costs.",
    "Attempt {attempt} keeps the focus on {angle}.",
]
_MAX_WORDS = 5000  # bounded so a typo in the `words` input cannot produce megabytes of text


def outline(ctx: Any) -> str:
    """Three-part outline for the topic."""
    topic = ctx.inputs["topic"]
    ctx.log(f"outlining {topic!r}, attempt {ctx.attempt}")
    sections = ["Why it matters", "How it works", "What to do next"]
    lines = []
    for number, section in enumerate(sections, start=1):
        time.sleep(0.2)
        lines.append(f"{number}. {section}: {topic}")
        ctx.progress(number / len(sections), f"section {number} of {len(sections)}")
    return f"Outline for {topic} (attempt {ctx.attempt})\n" + "\n".join(lines)


def _draft_text(topic: str, tone: str, angle: str, attempt: int, target_words: int) -> str:
    opener = _TONES.get(tone, "")
    sentences: list[str] = []
    word_count = 0
    while word_count < target_words:
        template = _SENTENCES[len(sentences) % len(_SENTENCES)]
        sentence = template.format(opener=opener, topic=topic, angle=angle, attempt=attempt).strip()
        sentences.append(sentence)
        word_count += len(sentence.split())
    return " ".join(sentences)


async def draft(ctx: Any) -> list[str]:
    """One draft per requested alternative, each from a different angle."""
    outline_text = ctx.outputs.get("outline", "")
    ctx.log(f"drafting {ctx.alternatives} alternatives from an outline of {len(outline_text.splitlines())} lines")
    target_words = min(max(int(ctx.inputs.get("words", 300)), 20), _MAX_WORDS)
    drafts: list[str] = []
    for index in range(ctx.alternatives):
        await asyncio.sleep(0.3)
        angle = _ANGLES[(index + ctx.attempt - 1) % len(_ANGLES)]
        text = _draft_text(ctx.inputs["topic"], ctx.inputs.get("tone", "friendly"), angle, ctx.attempt, target_words)
        drafts.append(f"Draft {index + 1} ({angle}, attempt {ctx.attempt})\n\n{text}")
        ctx.progress((index + 1) / ctx.alternatives, f"draft {index + 1} of {ctx.alternatives}")
    return drafts


def polish(ctx: Any) -> str:
    """Tidy the chosen draft and give it a title."""
    chosen = str(ctx.outputs.get("draft", ""))
    ctx.log(f"polishing a draft of {len(chosen.split())} words")
    time.sleep(0.3)
    body = chosen.split("\n\n", 1)[-1]
    sentences = [s.strip() for s in body.split(".") if s.strip()]
    paragraphs = [". ".join(sentences[i : i + 4]) + "." for i in range(0, len(sentences), 4)]
    ctx.progress(1.0, "polished")
    title = f"# {ctx.inputs['topic']}: a {ctx.inputs.get('tone', 'friendly')} guide (polish attempt {ctx.attempt})"
    return title + "\n\n" + "\n\n".join(paragraphs)


def stats(ctx: Any) -> dict[str, Any]:
    """Word count, reading time and distance from the requested length."""
    text = str(ctx.outputs.get("polish", ""))
    time.sleep(0.2)
    words = len(text.split())
    target = int(ctx.inputs.get("words", 300))
    ctx.progress(1.0, f"{words} words")
    return {
        "words": words,
        "characters": len(text),
        "paragraphs": len([p for p in text.split("\n\n") if p.strip()]),
        "reading_time_min": round(words / 200, 1),
        "target_words": target,
        "off_target_pct": round(100 * (words - target) / target, 1) if target else None,
        "attempt": ctx.attempt,
    }


async def research(ctx: Any) -> str:
    """Background notes on the company (async branch)."""
    company = ctx.inputs["company"]
    notes = [
        f"{company} sells tools to small and mid-sized teams.",
        f"{company} grew mostly through word of mouth.",
        f"Support quality is the most cited reason customers stay with {company}.",
    ]
    for number in range(1, len(notes) + 1):
        await asyncio.sleep(0.2)
        ctx.progress(number / len(notes), f"note {number} of {len(notes)}")
    ctx.log(f"collected {len(notes)} notes")
    return f"Research on {company} (attempt {ctx.attempt}):\n" + "\n".join(f"- {note}" for note in notes)


def competitors(ctx: Any) -> list[dict[str, Any]]:
    """A small, made-up competitor table (sync branch, runs in a thread)."""
    company = ctx.inputs["company"]
    rivals = []
    for number, suffix in enumerate(["Labs", "Works", "Systems"], start=1):
        time.sleep(0.2)
        rivals.append({"name": f"{company[:3]}{suffix}", "overlap": round(0.2 * number + 0.05 * ctx.attempt, 2)})
        ctx.progress(number / 3, f"{number} of 3 competitors")
    ctx.log(f"found {len(rivals)} competitors")
    return rivals


def pricing(ctx: Any) -> dict[str, Any]:
    """Price points per plan (sync branch)."""
    time.sleep(0.4)
    base = 10 + ctx.attempt
    ctx.progress(1.0, "priced 3 plans")
    return {"currency": "EUR", "plans": {"starter": base, "team": base * 3, "enterprise": base * 10}}


async def brief(ctx: Any) -> str:
    """Join the three branches into one brief."""
    company = ctx.inputs["company"]
    await asyncio.sleep(0.3)
    rivals = ", ".join(f"{r['name']} ({r['overlap']:.0%} overlap)" for r in ctx.outputs.get("competitors", []))
    plans = ctx.outputs.get("pricing", {}).get("plans", {})
    prices = ", ".join(f"{plan} {price} EUR" for plan, price in plans.items())
    ctx.progress(1.0, "brief written")
    return "\n\n".join(
        [
            f"# Market brief: {company} (attempt {ctx.attempt})",
            str(ctx.outputs.get("research", "")),
            f"Competitors: {rivals or 'none found'}.",
            f"Pricing: {prices or 'unknown'}.",
        ]
    )
