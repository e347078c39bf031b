"""The dashboard bounds NiceGUI's cache of rendered Markdown (outputs can be 100,000 characters each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_served_process_caches_at_most_64_rendered_markdown_contents() -> None:
    code = (
        "import os; os.environ.pop('MARKDOWN_CONTENT_CACHE_SIZE', None); import main; "
        "from nicegui.elements.markdown import prepare_content; print(prepare_content.cache_info().maxsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "64", out.stdout + out.stderr
