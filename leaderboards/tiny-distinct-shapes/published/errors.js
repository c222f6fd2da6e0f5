// Loaded first: records any script error on <body data-errors>, where a test (or a reader) finds it.
window.onerror = function (message) {
  var b = document.body;
  b.setAttribute('data-errors', (b.getAttribute('data-errors') || '') + String(message) + ';');
};
