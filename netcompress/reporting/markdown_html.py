"""Just enough Markdown to HTML for report sections, with no dependency and no raw HTML passed through.

Handles ``#`` headings, paragraphs, ``-``/``*`` bullet lists, fenced code blocks, inline
```code``` and ``**bold**``. Everything is HTML-escaped first, so text from a run (layer
names, error messages) cannot break the page.
"""

from __future__ import annotations

import html
import re

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")


def inline_html(text: str) -> str:
    """Escape ``text`` and render inline code and bold.

    Example:
        >>> inline_html("use `profile()` **now** <b>")
        'use <code>profile()</code> <strong>now</strong> &lt;b&gt;'
    """
    escaped = html.escape(text, quote=False)
    escaped = _INLINE_CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def markdown_to_html(text: str, *, heading_offset: int = 0) -> str:
    """Render a small Markdown subset to HTML; ``heading_offset`` demotes headings (``#`` -> ``h2`` with 1).

    Example:
        >>> markdown_to_html("Pruned **50%**.\\n\\n- conv1: 0.5\\n- fc: 0.9")
        '<p>Pruned <strong>50%</strong>.</p>\\n<ul>\\n<li>conv1: 0.5</li>\\n<li>fc: 0.9</li>\\n</ul>'
    """
    out: list[str] = []
    paragraph: list[str] = []
    bullets: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if paragraph:
            out.append("<p>" + " ".join(inline_html(line.strip()) for line in paragraph) + "</p>")
            paragraph.clear()
        if bullets:
            out.append("<ul>\n" + "\n".join(f"<li>{inline_html(b)}</li>" for b in bullets) + "\n</ul>")
            bullets.clear()

    for line in text.splitlines():
        if code is not None:
            if line.strip().startswith("```"):
                out.append("<pre><code>" + html.escape("\n".join(code), quote=False) + "</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.strip().startswith("```"):
            flush()
            code = []
        elif not line.strip():
            flush()
        elif heading := _HEADING.match(line):
            flush()
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{inline_html(heading.group(2))}</h{level}>")
        elif bullet := _BULLET.match(line):
            if paragraph:
                flush()
            bullets.append(bullet.group(1))
        else:
            if bullets:
                flush()
            paragraph.append(line)
    if code is not None:  # an unclosed fence still shows its text
        out.append("<pre><code>" + html.escape("\n".join(code), quote=False) + "</code></pre>")
    flush()
    return "\n".join(out)
