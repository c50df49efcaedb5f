"""The managed prompt of the tutorial chapter, as it lives in Langfuse, and an optional seeder.

In the chapter the prompt is created by hand in the Langfuse UI (Prompt Management -> New
prompt). ``seed_prompts()`` does the same through Langfuse's public API so the demo and the
docker-compose stack start with it:

* version 1: the chapter's system and user messages, labels ``production`` and ``prod-a``;
* version 2: a small, reviewable change to the escalation instruction, label ``prod-b``.

The app itself never creates prompts; it only fetches them by name and label.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

PROMPT_NAME = "order-status-answer"

USER_MESSAGE = (
    "Question: {{query}}\n"
    "Region: {{region}}\n"
    "Order state: {{order_state}}\n"
    "Policy document IDs: {{policy_document_ids}}\n"
    "Memory categories: {{memory_record_types}}"
)

VERSION_1 = [
    {
        "role": "system",
        "content": (
            "You are a support assistant. Answer using only authorized order and policy context.\n"
            "If the order state is missing or policy evidence is insufficient, escalate."
        ),
    },
    {"role": "user", "content": USER_MESSAGE},
]

VERSION_2 = [
    {
        "role": "system",
        "content": (
            "You are a support assistant. Answer using only authorized order and policy context.\n"
            "If the order state is missing, or no policy document supports the answer, escalate "
            "to a human agent and say that you did."
        ),
    },
    {"role": "user", "content": USER_MESSAGE},
]

CONFIG = {"model": "gpt-4o-mini", "temperature": 0}

# (messages, labels, commit message) in creation order: v1 then v2.
VERSIONS: list[tuple[list[dict[str, str]], list[str], str]] = [
    (VERSION_1, ["production", "prod-a"], "order-status answer: chapter version"),
    (VERSION_2, ["prod-b"], "order-status answer: clearer escalation instruction"),
]


class LangfuseApi:
    """The three calls of Langfuse's public prompts API the seeder needs (stdlib HTTP)."""

    def __init__(self, base_url: str, public_key: str, secret_key: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload or b"null")
            except ValueError:
                return error.code, payload.decode(errors="replace")

    def get_prompt(self, name: str, label: str) -> dict[str, Any] | None:
        quoted = urllib.parse.quote(name, safe="")
        status, body = self._call("GET", f"/api/public/v2/prompts/{quoted}?label={urllib.parse.quote(label)}")
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"GET prompt {name!r} label {label!r}: HTTP {status}: {body}")
        return dict(body)

    def create_prompt(self, name: str, messages: list[dict[str, str]], labels: list[str],
                      commit_message: str) -> dict[str, Any]:
        status, body = self._call("POST", "/api/public/v2/prompts", {
            "name": name, "type": "chat", "prompt": messages, "labels": labels,
            "config": CONFIG, "commitMessage": commit_message,
        })
        if status not in (200, 201):
            raise RuntimeError(f"create prompt {name!r}: HTTP {status}: {body}")
        return dict(body)

    def wait_until_up(self, seconds: float) -> None:
        """Until the prompts API answers these keys with 200 (a starting stack first refuses
        connections, then answers 5xx, then 401 until its init project exists)."""
        deadline = time.monotonic() + seconds
        next_note = time.monotonic() + 10.0
        while True:
            try:
                status, body = self._call("GET", "/api/public/v2/prompts?limit=1")
                why = f"HTTP {status}: {body}"
            except (urllib.error.URLError, OSError) as error:
                status, why = 0, str(error)
            if status == 200:
                return
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeError(f"Langfuse at {self.base_url} was not ready within {seconds:g} s ({why})")
            if now >= next_note:
                print(f"order_status: waiting for Langfuse at {self.base_url} ({why})", file=sys.stderr)
                next_note = now + 10.0
            time.sleep(1.0)


def seed_prompts(api: LangfuseApi) -> list[str]:
    """Create the two versions unless every label already points somewhere. Idempotent."""
    missing = [labels for _, labels, _ in VERSIONS if any(api.get_prompt(PROMPT_NAME, lb) is None
                                                          for lb in labels)]
    if not missing:
        return []
    created = []
    for messages, labels, commit in VERSIONS:
        record = api.create_prompt(PROMPT_NAME, messages, labels, commit)
        created.append(f"{PROMPT_NAME} v{record['version']} labels {', '.join(labels)}")
    return created
