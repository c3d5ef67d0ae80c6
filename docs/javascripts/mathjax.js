// MathJax 3 settings for pymdownx.arithmatex (generic mode); MathJax itself is served from
// the site (javascripts/tex-svg-full.js, copied from the pinned django-static-mathjax).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
