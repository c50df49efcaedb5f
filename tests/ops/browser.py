"""Headless Chromium (Debian's ``chromium``) as a person's browser, and a small DOM to read what
it shows.

``load(url)`` runs ``chromium --headless --dump-dom`` (the DOM after parsing, as the browser
built it) with ``--enable-logging=stderr``, where Chromium writes every console message and
uncaught error as an ``INFO:CONSOLE`` line; ``screenshot(url, png)`` saves what the page looks
like. Each run is its own process group with its own profile directory, bounded in time and
killed by its id if it overruns.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]? (.*)$")


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium not installed (Debian package 'chromium'; scripts/test.sh installs it): "
                "the pages are not checked in a real browser")


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)
    parent: Node | None = None

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def words(self) -> str:
        """The text with runs of white space made one space."""
        return " ".join(self.text().split())

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        """Descendants (and self) by tag, by one of their classes, by attribute values
        (``data_version="14"`` is ``data-version``)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}

        def ok(n: Node) -> bool:
            return ((tag is None or n.tag == tag)
                    and (cls is None or cls in n.attrs.get("class", "").split())
                    and all(n.attrs.get(k) == v for k, v in want.items()))

        return [n for n in self.walk() if ok(n)]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        got = self.all(tag, cls, **attrs)
        assert len(got) == 1, f"expected one <{tag} class={cls} {attrs}>, found {len(got)}"
        return got[0]

    def has_ancestor(self, pred: Callable[[Node], bool]) -> bool:
        n = self.parent
        while n is not None:
            if pred(n):
                return True
            n = n.parent
        return False


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.at = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.at)
        self.at.children.append(node)
        if tag not in _VOID:
            self.at = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.at.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self.at))

    def handle_endtag(self, tag: str) -> None:
        n: Node | None = self.at
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.at = n.parent

    def handle_data(self, data: str) -> None:
        self.at.children.append(data)


def parse(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


@dataclass
class Loaded:
    dom: Node
    html: str
    console: list[str]  # console messages and uncaught errors, as Chromium logged them


def _run(args: list[str], profile: Path, timeout: float) -> tuple[str, str]:
    binary = chromium_or_skip()
    argv = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={profile}", *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call started: browser, renderer, zygote
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {timeout:.0f} s: {' '.join(args)}") from None
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out, err


def load(url: str, profile: Path, timeout: float = 60.0) -> Loaded:
    out, err = _run(["--dump-dom", url], profile, timeout)
    console = [m.group(1) for line in err.splitlines() if (m := _CONSOLE.search(line))]
    return Loaded(parse(out), out, console)


def screenshot(url: str, png: Path, profile: Path, size: tuple[int, int] = (1200, 1600),
               timeout: float = 60.0) -> Path:
    _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", url], profile, timeout)
    assert png.exists() and png.stat().st_size > 10_000, f"no screenshot at {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return png
