// The leaderboard page's sorting. It reads only data-* attributes of the escaped table, never run text as code.
(function () {
  function sortTable(col, dir) {
    var table = document.getElementById('leaderboard');
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var index = headers.findIndex(function (th) { return th.getAttribute('data-col') === col; });
    if (index < 0) { throw new Error('no column ' + col); }
    var numeric = headers[index].getAttribute('data-type') === 'number';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute('data-sort'), y = b.cells[index].getAttribute('data-sort');
      if (x === '' && y === '') { return 0; }
      if (x === '') { return 1; }
      if (y === '') { return -1; }
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return dir === 'desc' ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (th) { th.removeAttribute('aria-sort'); });
    headers[index].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
    document.body.setAttribute('data-sorted-by', col + ':' + dir);
  }
  var table = document.getElementById('leaderboard');
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener('click', function () {
      var next = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
      sortTable(th.getAttribute('data-col'), next);
    });
  });
  var params = new URLSearchParams(window.location.search);
  if (params.get('sort')) { sortTable(params.get('sort'), params.get('dir') === 'desc' ? 'desc' : 'asc'); }
  // How many pixels the main table is wider than its column (0: it fits the window; the tests
  // read it at a laptop's 1,400 px).
  var wrapper = table.parentNode;
  document.body.setAttribute('data-table-overflow', String(Math.max(0, table.offsetWidth - wrapper.clientWidth)));
  document.body.setAttribute('data-ready', '1');
})();
