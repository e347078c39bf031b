"""The model client package (`openai`, about a second of CPU to import) is imported in a thread, never on
the event loop, where it would stop every run and page for that second."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.served import ROOT

# In a fresh interpreter: who asks the import system for `openai` (a finder placed first sees each
# import that is not done yet, in the thread that does it).
SCRIPT = """
import asyncio, json, sys, threading

importers = []


class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "openai":
            importers.append(threading.current_thread() is threading.main_thread())
        return None


sys.meta_path.insert(0, Watch)
from engine.llm.openai_compat import OpenAIProvider


async def main():
    provider = OpenAIProvider("http://127.0.0.1:9/v1", "", 0, 0.1)
    made = "openai" in sys.modules
    listed = await provider.models()  # nothing listens on port 9: the client is made, the request fails
    await provider.close()
    print(json.dumps({"imported_when_made": made, "listed": listed, "on_loop": importers}))


asyncio.run(main())
"""


def test_the_model_client_is_imported_in_a_thread_at_the_first_request() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"imported_when_made": False, "listed": None, "on_loop": [False]}
