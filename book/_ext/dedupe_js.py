"""Drop duplicated script entries from each page (jupyter-book 1.0.4 + Sphinx 7.4.7).

sphinx-thebe and sphinx-togglebutton inline scripts reach ``script_files`` twice (filename ``None`` and
``''``), which throws ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` on every page.
Keeps the first of each (filename, attributes) pair. See ../shared/STACK.md, fix 3.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, out = set(), []
    for js in context.get("script_files", []):
        key = (getattr(js, "filename", js) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            out.append(js)
    context["script_files"] = out


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
