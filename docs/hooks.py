"""MkDocs hooks of chainrule's documentation (mkdocs.yml: `hooks`).

1. The API pages document `chainrule.reference.*`, but in the repository that package is the
   folder reference/ (pyproject maps it), which griffe's static analysis cannot see. At build
   time a temporary folder is laid out as the installed names (`chainrule/reference` and
   `chainrule/fast` linking to the repository's folders) and handed to mkdocstrings as its
   search path, so the pages are made from the source files themselves, nothing imported.
2. Docstrings name the n-gram tokens <s>, </s>, <unk> in plain text; Markdown would pass them
   through as HTML tags (<s> is strikethrough, <unk> vanishes). Rendered pages show them as text.
3. Math renders offline: MathJax 3 (its single-file `tex-svg-full.js`, no fonts to fetch) is
   taken from the pinned PyPI package django-static-mathjax and written into the site, so
   the pages load no script from a CDN.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
MATHJAX = "javascripts/tex-svg-full.js"  # the path mkdocs.yml's extra_javascript names


def _layout_installed_names() -> str:
    tmp = Path(tempfile.mkdtemp(prefix="chainrule-docs-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    pkg = tmp / "chainrule"
    pkg.mkdir()
    shutil.copy(ROOT / "chainrule" / "__init__.py", pkg / "__init__.py")
    for name in ("reference", "fast"):
        (pkg / name).symlink_to(ROOT / name, target_is_directory=True)
    return str(tmp)


@event_priority(100)  # before mkdocstrings' on_config, which creates the handler
def on_config(config, **kwargs):
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [_layout_installed_names()]
    return config


def on_files(files, config, **kwargs):
    try:
        import mathjax  # django-static-mathjax: MathJax's es5 build, as package data
    except ImportError as e:
        raise RuntimeError("the docs need django-static-mathjax: pip install -r requirements/docs.txt") from e
    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / Path(MATHJAX).name
    files.append(File.generated(config, MATHJAX, abs_src_path=str(src)))
    return files


# The only tags Markdown could have let through from plain text: no theme emits them.
_TOKEN_TAGS = re.compile(r"</?(?:s|unk|k)>")


def on_page_content(html, page, config, files, **kwargs):
    return _TOKEN_TAGS.sub(lambda m: m.group(0).replace("<", "&lt;").replace(">", "&gt;"), html)
