"""Let the ipywidgets HTML manager typeset with MathJax 3.

``@jupyter-widgets/html-manager`` 1.0.6 typesets widget labels with the MathJax 2 call
``MathJax.Hub.Queue(["Typeset", MathJax.Hub, el])``. The book serves MathJax 3, which has no ``Hub``, so
every labelled widget threw ``TypeError: Cannot read properties of undefined (reading 'Queue')`` in the
reader's browser. This adds, before any other script, a small shim: whatever object becomes
``window.MathJax`` (the config object first, then MathJax 3's own global, which replaces it) gets a
non-enumerable ``Hub.Queue`` that forwards to MathJax 3's ``typesetPromise``.
"""

SHIM = """(function () {
  var current;
  function addHub(m) {
    if (m && typeof m === "object" && !Object.prototype.hasOwnProperty.call(m, "Hub")) {
      Object.defineProperty(m, "Hub", {configurable: true, enumerable: false, value: {
        Queue: function (job) {
          var el = Array.isArray(job) ? job[2] : undefined;
          var mj = window.MathJax;
          if (mj && typeof mj.typesetPromise === "function") {
            mj.typesetPromise(el ? [el] : undefined).catch(function (e) { console.warn("MathJax:", e); });
          }
        }
      }});
    }
    return m;
  }
  Object.defineProperty(window, "MathJax", {configurable: true,
    get: function () { return current; }, set: function (v) { current = addHub(v); }});
})();"""


def setup(app):
    app.add_js_file(None, body=SHIM, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
