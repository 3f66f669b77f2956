/* TreeSAE feature browser: a dependency-free single-page app.
 *
 * Routes (hash):  #/                          index of SAEs
 *                 #/sae/<name>                feature list (search, sort; virtualised)
 *                 #/sae/<name>/tree           tree view (TreeSAE variants)
 *                 #/sae/<name>/feature/<id>   feature page
 * Data: data/*.js files call window.__load(key, payload); they are added as <script> tags on demand
 * (fetch() of local files is blocked under file://). See treesae/browser/site.py for the layout.
 */
(function () {
  'use strict';

  // ------------------------------------------------------------------ data loading (JSONP style)
  var store = window.__data || {};
  var waiting = {};
  window.__load = function (key, payload) {
    store[key] = payload;
    var w = waiting[key];
    if (w) { delete waiting[key]; w.forEach(function (p) { p.resolve(payload); }); }
  };
  function load(key, src) {
    if (Object.prototype.hasOwnProperty.call(store, key)) return Promise.resolve(store[key]);
    return new Promise(function (resolve, reject) {
      if (waiting[key]) { waiting[key].push({ resolve: resolve, reject: reject }); return; }
      waiting[key] = [{ resolve: resolve, reject: reject }];
      var s = document.createElement('script');
      s.src = src;
      s.charset = 'utf-8';
      var fail = function (msg) {
        var w = waiting[key];
        delete waiting[key];
        (w || []).forEach(function (p) { p.reject(new Error(msg)); });
      };
      s.onerror = function () { fail('could not load ' + src); };
      s.onload = function () { s.remove(); if (waiting[key]) fail(src + ' did not provide ' + key); };
      document.head.appendChild(s);
    });
  }

  var INDEX = store.index;
  var perf = window.__perf = window.__perf || {};
  var app = document.getElementById('app');
  var crumbs = document.getElementById('crumbs');
  if (!INDEX) {
    app.innerHTML = '<div class="error">data/index.js is missing or failed to load. Regenerate the site with ' +
      '<code>treesae.browser.write_site</code>.</div>';
    return;
  }
  var SAES = INDEX.saes;
  var BY_NAME = {};
  SAES.forEach(function (s, i) { s.index = i; BY_NAME[s.name] = s; });
  var EDGES = INDEX.settings.hist_edges || [];

  function saeDir(s) { return 'data/saes/' + s.slug + '/'; }
  function loadList(s) { return load('list/' + s.name, saeDir(s) + 'list.js'); }
  function loadShard(s, k) { return load('shard/' + s.name + '/' + k, saeDir(s) + 'f' + k + '.js'); }
  function loadVocab() { return load('vocab', 'data/vocab.js'); }
  function loadCtx(src, k) { return load('ctx/' + src + '/' + k, 'data/ctx/s' + src + '/c' + k + '.js'); }

  // ------------------------------------------------------------------------------ helpers
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }
  function fmt(x, digits) {
    if (x === null || x === undefined || (typeof x === 'number' && isNaN(x))) return '–';
    if (typeof x !== 'number') return String(x);
    if (x === 0) return '0';
    var a = Math.abs(x);
    if (Number.isInteger(x) && a < 1e7) return x.toLocaleString('en-US');
    if (a >= 1e5 || a < 1e-3) return x.toExponential((digits || 3) - 1).replace('e+', 'e');
    return String(Number(x.toPrecision(digits || 3)));
  }
  function pct(x) {
    if (x === null || x === undefined) return '–';
    if (x === 0) return '0%';
    var p = x * 100;
    return (p >= 10 ? p.toFixed(1) : p >= 0.01 ? String(Number(p.toPrecision(2))) : p.toExponential(0)) + '%';
  }
  function featHref(name, id) { return '#/sae/' + encodeURIComponent(name) + '/feature/' + id; }
  function listHref(name) { return '#/sae/' + encodeURIComponent(name); }
  function treeHref(name, id) { return '#/sae/' + encodeURIComponent(name) + '/tree' + (id !== undefined ? '/' + id : ''); }
  /** A token as visible text: whitespace made visible (space -> middle dot only at the token edges). */
  function tokText(s, edges) {
    s = String(s).replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5').replace(/\r/g, '');
    if (edges) s = s.replace(/^ +| +$/g, function (m) { return m.replace(/ /g, '\u00b7'); });
    return s === '' ? '\u2205' : s;
  }
  function chips(label, cls) {
    if (!label) return '';
    return label.split('\u2003').map(function (t) {
      return '<span class="tok ' + (cls || '') + '">' + esc(tokText(t, true)) + '</span>';
    }).join('');
  }
  function setCrumbs(items) {
    crumbs.innerHTML = items.map(function (it, i) {
      var last = i === items.length - 1;
      return (i ? '<span class="sep">/</span>' : '') +
        (it[1] && !last ? '<a href="' + it[1] + '">' + esc(it[0]) + '</a>' : '<span class="here">' + esc(it[0]) + '</span>');
    }).join('');
  }
  function levelOf(s, f) {
    for (var l = 0; l < s.levels.length; l++) if (f >= s.levels[l][0] && f < s.levels[l][1]) return l;
    return 0;
  }
  function corpusOf(m) { return m.corpus !== null ? m.corpus : undefined; }
  function metaChips(s) {
    var m = s.meta || {};
    var out = ['<span class="chip arch">' + esc(s.architecture) + '</span>'];
    if (m.layer !== undefined && m.layer !== null) out.push('<span class="chip">layer ' + esc(m.layer) + '</span>');
    if (corpusOf(m)) out.push('<span class="chip">' + esc(corpusOf(m)) + '</span>');
    out.push('<span class="chip">' + fmt(s.d_sae) + ' latents</span>');
    if (s.levels.length > 1) out.push('<span class="chip">' + s.levels.length + ' levels</span>');
    return out.join('');
  }
  var token = 0;  // render generation: a slow load never overwrites a newer page
  function fail(err) {
    app.innerHTML = '<div class="error">' + esc(err && err.message ? err.message : err) + '</div>';
  }

  // ------------------------------------------------------------------------------ sortable table
  function sortTable(table) {
    var head = table.tHead.rows[0];
    Array.prototype.forEach.call(head.cells, function (th, col) {
      th.addEventListener('click', function () {
        var dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
        Array.prototype.forEach.call(head.cells, function (c) { delete c.dataset.dir; });
        th.dataset.dir = dir;
        var rows = Array.prototype.slice.call(table.tBodies[0].rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
          var nx = parseFloat(x), ny = parseFloat(y), r;
          if (!isNaN(nx) && !isNaN(ny)) r = nx - ny;
          else if (!isNaN(nx)) r = -1;
          else if (!isNaN(ny)) r = 1;
          else r = String(x).localeCompare(String(y));
          return dir === 'asc' ? r : -r;
        });
        rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
      });
    });
  }

  // ------------------------------------------------------------------------------ index page
  function renderIndex() {
    setCrumbs([['SAEs', '#/']]);
    document.title = INDEX.title;
    var shown = ['architecture', 'layer', 'corpus'];
    var cols = INDEX.meta_columns.filter(function (c) { return shown.indexOf(c) < 0; });
    var st = INDEX.settings;
    var srcs = INDEX.sources.map(function (s) {
      return esc(s.corpus || 'held-out') + ': ' + fmt(s.n_contexts) + ' × ' + s.context_len + ' tokens';
    }).join(' · ');
    var h = '<section class="hero"><h1>Sparse autoencoders</h1><p class="lede">' + SAES.length +
      ' SAEs. Feature statistics come from held-out contexts (' + srcs + ')' +
      (st.drop_first ? '; position 0 (the attention sink) is left out of frequencies, histograms and the top contexts and shown separately in each feature\'s position profile' : '') +
      '. Click a column to sort.</p>' +
      '<input id="q" class="search" type="search" placeholder="Filter SAEs by name, architecture, corpus…" autocomplete="off"></section>';
    h += '<div class="tablewrap"><table class="grid" id="saes"><thead><tr><th>SAE</th><th>architecture</th>' +
      '<th class="num">layer</th><th>corpus</th><th class="num">latents</th><th class="num">levels</th>' +
      '<th class="num" title="fraction of latents that never fired on the held-out tokens">dead (held-out)</th>' +
      cols.map(function (c) { return '<th class="num">' + esc(c) + '</th>'; }).join('') + '</tr></thead><tbody>';
    SAES.forEach(function (s) {
      var m = s.meta || {};
      var cell = function (v, cls) {
        var dv = (v === null || v === undefined) ? '' : v;
        return '<td class="' + (typeof v === 'number' ? 'num ' : '') + (cls || '') + '" data-v="' + esc(dv) + '">' +
          (typeof v === 'number' ? fmt(v, 4) : esc(dv === '' ? '–' : dv)) + '</td>';
      };
      h += '<tr data-q="' + esc((s.name + ' ' + s.architecture + ' ' + (corpusOf(m) || '')).toLowerCase()) + '">' +
        '<td data-v="' + esc(s.name) + '"><a class="saelink" href="' + listHref(s.name) + '">' + esc(s.name) + '</a>' +
        (s.tree ? ' <span class="chip tree">tree</span>' : '') + '</td>' +
        cell(s.architecture) + cell(m.layer) + cell(corpusOf(m)) + cell(s.d_sae) + cell(s.levels.length) +
        '<td class="num" data-v="' + s.dead + '">' + pct(s.dead) + '</td>' +
        cols.map(function (c) { return cell(m[c]); }).join('') + '</tr>';
    });
    h += '</tbody></table></div>';
    h += '<p class="note">' + esc(st.logit_choice || '') + '</p>';
    app.innerHTML = h;
    sortTable(document.getElementById('saes'));
    var q = document.getElementById('q');
    q.addEventListener('input', function () {
      var v = q.value.trim().toLowerCase();
      Array.prototype.forEach.call(document.querySelectorAll('#saes tbody tr'), function (tr) {
        tr.hidden = v !== '' && tr.dataset.q.indexOf(v) < 0;
      });
    });
    perf.index = { at: performance.now() };
    document.body.dataset.view = 'index';
  }

  // ------------------------------------------------------------------------------ feature list
  var ROW_H = 32;
  var listState = {};  // per SAE: query, sort column, direction, scroll position

  function listColumns(s, L) {
    var c = L.cols;
    var cols = [{ key: 'id', label: 'feature', w: '84px', num: true, get: function (f) { return f; },
      html: function (f) { return '<a href="' + featHref(s.name, f) + '">#' + f + '</a>'; } }];
    if (c.level) cols.push({ key: 'level', label: 'level', w: '56px', num: true, get: function (f) { return c.level[f]; } });
    if (c.parent) cols.push({ key: 'parent', label: 'parent', w: '74px', num: true, get: function (f) { return c.parent[f]; },
      html: function (f) { var p = c.parent[f]; return p < 0 ? '<span class="muted">root</span>' : '<a href="' + featHref(s.name, p) + '">#' + p + '</a>'; } });
    cols.push(
      { key: 'freq', label: 'frequency', w: '118px', num: true, cls: 'fcell', title: 'fraction of held-out tokens on which the feature fires',
        get: function (f) { return c.freq[f]; }, html: function (f) { return freqBar(c.freq[f]); } },
      { key: 'mean', label: 'mean act', w: '84px', num: true, title: 'mean activation over the tokens where it fires', get: function (f) { return c.mean[f]; } },
      { key: 'max', label: 'max act', w: '84px', num: true, get: function (f) { return c.max[f]; } },
      { key: 'pos0', label: 'pos 0', w: '72px', num: true, title: 'fraction of the activation mass (sum over positions of the mean activation) at position 0',
        get: function (f) { return c.pos0[f]; }, html: function (f) { return pct(c.pos0[f]); } },
      { key: 'peak', label: 'peak pos', w: '74px', num: true, title: 'position with the largest mean activation (position 0 left out)', get: function (f) { return c.peak[f]; } },
      { key: 'peakx', label: 'peak ×', w: '70px', num: true, title: 'peak / mean of the position profile: 1 = flat, large = position-specific', get: function (f) { return c.peakx[f]; } },
      { key: 'act_tok', label: 'top-activating tokens', w: 'minmax(0,1.2fr)', get: function (f) { return c.act_tok[f]; },
        html: function (f) { return chips(c.act_tok[f], 'hl'); } });
    if (c.logit_tok) cols.push({ key: 'logit_tok', label: 'promotes', w: 'minmax(0,1fr)', get: function (f) { return c.logit_tok[f]; },
      html: function (f) { return chips(c.logit_tok[f], 'up'); } });
    return cols;
  }
  function freqBar(x) {
    // log scale: 1e-6 -> 0, 1 -> 100%
    var w = x > 0 ? Math.max(2, Math.min(100, (Math.log10(x) + 6) / 6 * 100)) : 0;
    return '<span class="fbar"><span style="width:' + w.toFixed(1) + '%"></span></span><span class="fval">' + pct(x) + '</span>';
  }

  function renderList(name, gen) {
    var t0 = performance.now();
    var s = BY_NAME[name];
    if (!s) return fail('No SAE named ' + name);
    setCrumbs([['SAEs', '#/'], [name, listHref(name)]]);
    document.title = name + ' · ' + INDEX.title;
    loadList(s).then(function (L) {
      if (gen !== token) return;
      var st = listState[name] || (listState[name] = { q: '', sort: 'id', dir: 'asc', top: 0 });
      var cols = listColumns(s, L);
      var template = cols.map(function (c) { return c.w; }).join(' ');
      var h = '<section class="saehead"><div><h1>' + esc(name) + '</h1><div class="chips">' + metaChips(s) +
        (s.tree ? '<a class="btn" href="' + treeHref(name) + '">tree view</a>' : '') + '</div></div>' + metricGrid(s) + '</section>';
      h += '<div class="controls"><input id="q" class="search" type="search" autocomplete="off" ' +
        'placeholder="Search a feature id or a token (e.g. 42, the, def)…" value="' + esc(st.q) + '">' +
        '<label class="check"><input id="alive" type="checkbox"' + (st.alive ? ' checked' : '') + '> hide dead</label>' +
        '<span id="count" class="muted"></span></div>';
      h += '<div class="vlist" id="vlist" style="--cols:' + template + '"><div class="vrow vhead">' +
        cols.map(function (c) {
          return '<div class="' + (c.num ? 'num ' : '') + 'sortable" data-key="' + c.key + '"' +
            (c.title ? ' title="' + esc(c.title) + '"' : '') + '>' + esc(c.label) + '</div>';
        }).join('') + '</div><div class="vbody" id="vbody"><div class="vpad" id="vpad"></div></div></div>';
      app.innerHTML = h;
      var body = document.getElementById('vbody'), pad = document.getElementById('vpad');
      var countEl = document.getElementById('count');
      var n = L.n, order = null;
      var colBy = {};
      cols.forEach(function (c) { colBy[c.key] = c; });

      function compute() {
        var q = st.q.trim().toLowerCase();
        var idx = [];
        var asNum = /^#?\d+$/.test(q) ? parseInt(q.replace('#', ''), 10) : -1;
        var freq = L.cols.freq, lab = L.cols.act_tok, lt = L.cols.logit_tok;
        var labLower = L._lower || (L._lower = lab.map(function (x) { return x.toLowerCase(); }));
        var ltLower = lt ? (L._lt || (L._lt = lt.map(function (x) { return x.toLowerCase(); }))) : null;
        for (var f = 0; f < n; f++) {
          if (st.alive && !(freq[f] > 0)) continue;
          if (q && f !== asNum && labLower[f].indexOf(q) < 0 && !(ltLower && ltLower[f].indexOf(q) >= 0)) continue;
          idx.push(f);
        }
        var c = colBy[st.sort] || colBy.id, sign = st.dir === 'asc' ? 1 : -1;
        if (c.key !== 'id' || sign < 0) {
          var vals = new Array(n);
          for (var i = 0; i < idx.length; i++) vals[idx[i]] = c.get(idx[i]);
          idx.sort(function (a, b) {
            var x = vals[a], y = vals[b];
            if (x === y) return a - b;
            if (typeof x === 'string') return sign * x.localeCompare(y) || a - b;
            if (x === null) return 1;
            if (y === null) return -1;
            return sign * (x - y);
          });
        }
        order = idx;
        countEl.textContent = (order.length === n ? fmt(n) + ' features' : fmt(order.length) + ' of ' + fmt(n) + ' features');
        pad.style.height = order.length * ROW_H + 'px';
        Array.prototype.forEach.call(document.querySelectorAll('#vlist .vhead > div'), function (d) {
          d.dataset.dir = d.dataset.key === st.sort ? st.dir : '';
        });
        draw(true);
      }
      var drawn = [-1, -1];
      function draw(force) {
        var top = body.scrollTop, hgt = body.clientHeight || 600;
        var a = Math.max(0, Math.floor(top / ROW_H) - 8), b = Math.min(order.length, Math.ceil((top + hgt) / ROW_H) + 8);
        if (!force && a === drawn[0] && b === drawn[1]) return;
        drawn = [a, b];
        var out = [];
        for (var i = a; i < b; i++) {
          var f = order[i];
          out.push('<div class="vrow' + (L.cols.freq[f] > 0 ? '' : ' dead') + '" data-f="' + f + '" style="top:' + i * ROW_H + 'px">' +
            cols.map(function (c) {
              return '<div class="' + (c.cls || (c.num ? 'num' : 'toks')) + '">' + (c.html ? c.html(f) : fmt(c.get(f))) + '</div>';
            }).join('') + '</div>');
        }
        pad.innerHTML = out.join('');
        st.top = top;
      }
      body.addEventListener('scroll', function () { draw(false); }, { passive: true });
      body.addEventListener('click', function (e) {
        if (e.target.closest('a')) return;
        var row = e.target.closest('.vrow');
        if (row) location.hash = featHref(name, +row.dataset.f);
      });
      document.querySelector('#vlist .vhead').addEventListener('click', function (e) {
        var d = e.target.closest('[data-key]');
        if (!d) return;
        var k = d.dataset.key;
        st.dir = st.sort === k ? (st.dir === 'asc' ? 'desc' : 'asc') : (k === 'id' || k === 'act_tok' || k === 'logit_tok' ? 'asc' : 'desc');
        st.sort = k;
        body.scrollTop = 0;
        compute();
      });
      var qel = document.getElementById('q');
      var timer = null;
      qel.addEventListener('input', function () {
        clearTimeout(timer);
        timer = setTimeout(function () { st.q = qel.value; body.scrollTop = 0; compute(); }, 60);
      });
      document.getElementById('alive').addEventListener('change', function (e) { st.alive = e.target.checked; compute(); });
      compute();
      if (st.top) { body.scrollTop = st.top; draw(true); }
      void body.offsetHeight;  // layout done: what the user sees
      perf.list = { sae: name, n: n, ms: performance.now() - t0, at: performance.now() };
      document.body.dataset.view = 'list';
    }).catch(fail);
  }

  function metricGrid(s) {
    var m = s.meta || {};
    var skip = { architecture: 1, layer: 1, corpus: 1 };
    var items = INDEX.meta_columns.filter(function (c) { return !skip[c] && m[c] !== null && m[c] !== undefined; });
    items = items.map(function (c) {
      return '<div class="metric"><div class="k">' + esc(c) + '</div><div class="v">' + (typeof m[c] === 'number' ? fmt(m[c], 4) : esc(m[c])) + '</div></div>';
    });
    items.push('<div class="metric"><div class="k" title="never fired on the held-out tokens">dead (held-out)</div><div class="v">' + pct(s.dead) + '</div></div>');
    return '<div class="metrics">' + items.join('') + '</div>';
  }

  // ------------------------------------------------------------------------------ tree view
  function childrenIndex(L) {
    if (L._children) return L._children;
    var par = L.cols.parent, kids = {};
    for (var f = 0; f < par.length; f++) {
      var p = par[f];
      if (p >= 0) (kids[p] || (kids[p] = [])).push(f);
    }
    L._children = kids;
    return kids;
  }
  function ancestors(L, f) {
    var out = [], par = L.cols.parent, guard = 0;
    while (par && par[f] >= 0 && guard++ < 64) { f = par[f]; out.unshift(f); }
    return out;
  }

  function renderTree(name, focus, gen) {
    var s = BY_NAME[name];
    if (!s) return fail('No SAE named ' + name);
    setCrumbs([['SAEs', '#/'], [name, listHref(name)], ['tree', treeHref(name)]]);
    document.title = name + ' tree · ' + INDEX.title;
    loadList(s).then(function (L) {
      if (gen !== token) return;
      if (!L.cols.parent) return fail(name + ' is not a tree SAE (it has no parent map).');
      var kids = childrenIndex(L), c = L.cols;
      var open = {};
      if (focus !== undefined && !isNaN(focus)) ancestors(L, focus).forEach(function (a) { open[a] = true; });
      var roots = [];
      for (var f = 0; f < L.n; f++) if (c.parent[f] < 0) roots.push(f);
      roots.sort(function (a, b) { return (c.freq[b] - c.freq[a]) || a - b; });
      var limit = 200;
      function node(f, depth) {
        var k = kids[f] || [];
        var h = '<li class="' + (f === focus ? 'focus' : '') + '"><div class="tnode' + (c.freq[f] > 0 ? '' : ' dead') + '">' +
          (k.length ? '<button class="twist" data-f="' + f + '" aria-expanded="' + (open[f] ? 'true' : 'false') + '">' + (open[f] ? '▾' : '▸') + '</button>'
            : '<span class="twist leaf">•</span>') +
          '<a href="' + featHref(name, f) + '">#' + f + '</a><span class="lvl">L' + levelOf(s, f) + '</span>' +
          '<span class="tfreq">' + pct(c.freq[f]) + '</span><span class="toks">' + chips(c.act_tok[f], 'hl') + '</span>' + edgeHtml(c, f) + '</div>';
        if (k.length && open[f]) h += '<ul>' + k.map(function (x) { return node(x, depth + 1); }).join('') + '</ul>';
        return h + '</li>';
      }
      function draw() {
        document.getElementById('tree').innerHTML = roots.slice(0, limit).map(function (r) { return node(r, 0); }).join('') +
          (roots.length > limit ? '<li><button class="btn" id="more">show more roots (' + (roots.length - limit) + ' left)</button></li>' : '');
      }
      app.innerHTML = '<section class="saehead"><div><h1>' + esc(name) + ' <span class="muted">tree</span></h1><div class="chips">' +
        metaChips(s) + '<a class="btn" href="' + listHref(name) + '">feature list</a></div></div></section>' +
        '<p class="muted">Level-0 features, most frequent first. Every child may fire only where its parent fires; expand a node to see its children.</p>' +
        '<ul class="tree" id="tree"></ul>';
      draw();
      var fo = document.querySelector('#tree li.focus');
      if (fo) fo.scrollIntoView({ block: 'center' });
      document.getElementById('tree').addEventListener('click', function (e) {
        var b = e.target.closest('button');
        if (!b) return;
        if (b.id === 'more') { limit += 200; draw(); return; }
        var f = +b.dataset.f;
        open[f] = !open[f];
        draw();
      });
      document.body.dataset.view = 'tree';
    }).catch(fail);
  }

  // ------------------------------------------------------------------------------ feature page
  function renderFeature(name, f, gen) {
    var t0 = performance.now();
    var s = BY_NAME[name];
    if (!s) return fail('No SAE named ' + name);
    if (!(f >= 0 && f < s.d_sae)) return fail('Feature ' + f + ' is out of range (0…' + (s.d_sae - 1) + ') for ' + name);
    setCrumbs([['SAEs', '#/'], [name, listHref(name)], ['feature ' + f, null]]);
    document.title = name + ' #' + f + ' · ' + INDEX.title;
    var shard = Math.floor(f / s.shard_size);
    Promise.all([loadList(s), loadShard(s, shard), loadVocab()]).then(function (r) {
      var L = r[0], S = r[1], V = r[2];
      var rec = S.features[f - S.start];
      var need = {};
      rec.x.forEach(function (x) { need[Math.floor(x[0] / INDEX.ctx_shard)] = true; });
      return Promise.all(Object.keys(need).map(function (k) { return loadCtx(s.source, +k); })).then(function (cs) {
        var ctx = {};
        cs.forEach(function (C) { C.tokens.forEach(function (t, i) { ctx[C.start + i] = { tokens: t, id: C.ids[i] }; }); });
        return [L, rec, V, ctx];
      });
    }).then(function (r) {
      if (gen !== token) return;
      var L = r[0], rec = r[1], V = r[2], ctx = r[3], c = L.cols;
      var h = '<section class="fhead"><div class="ftitle"><h1><span class="muted">#</span>' + f + '</h1>' +
        '<div class="fsub"><a href="' + listHref(name) + '">' + esc(name) + '</a>' + metaChips(s) +
        (s.levels.length > 1 ? '<span class="chip lvl">level ' + levelOf(s, f) + '</span>' : '') + '</div></div>' +
        '<div class="nav">' + (f > 0 ? '<a class="btn" id="prev" href="' + featHref(name, f - 1) + '">← #' + (f - 1) + '</a>' : '') +
        (f + 1 < s.d_sae ? '<a class="btn" id="next" href="' + featHref(name, f + 1) + '">#' + (f + 1) + ' →</a>' : '') + '</div></section>';
      h += '<section class="cards">' +
        card('frequency', pct(c.freq[f]), 'of held-out tokens' + (s.first_counted ? ' (position 0 left out)' : '')) +
        card('mean activation', fmt(c.mean[f]), 'where it fires') +
        card('max activation', fmt(c.max[f]), 'held-out') +
        card('mass at position 0', pct(c.pos0[f]), 'of the mean-activation profile') +
        card('peak position', c.freq[f] > 0 ? String(c.peak[f]) : '–', 'peak / mean ' + fmt(c.peakx[f])) + '</section>';
      if (c.parent) h += treePanel(s, L, f);
      h += '<section class="panel"><h2>Top-activating held-out contexts</h2>' +
        '<div class="legend"><span><span class="sw"></span>activation / feature max (' + fmt(c.max[f]) + ')</span>' +
        '<span><span class="pk">tok</span> the context\'s maximum</span>' +
        (s.first_counted ? '<span><span class="sk">tok</span> position 0 (not ranked)</span>' : '') +
        '<span>hover a token for its value</span></div>' + contextsHtml(s, rec, V, ctx, c.max[f]) + '</section>';
      h += '<div class="two"><section class="panel"><h2>Activation histogram <span class="muted small">non-zero, log bins</span></h2>' +
        histSvg(rec.h) + '</section><section class="panel"><h2>Mean activation by position</h2>' + posSvg(rec.p, s.first_counted) + '</section></div>';
      h += '<div class="two"><section class="panel"><h2>Logit effect of the decoder direction</h2>' + logitHtml(rec, V) + '</section>' +
        '<section class="panel"><h2>Best matches in other SAEs <span class="muted small">decoder cosine</span></h2>' + matchesHtml(rec) + '</section></div>';
      app.innerHTML = h;
      perf.feature = { sae: name, f: f, ms: performance.now() - t0, at: performance.now() };
      document.body.dataset.view = 'feature';
    }).catch(fail);
  }
  function card(k, v, sub) {
    return '<div class="card"><div class="k">' + esc(k) + '</div><div class="v">' + esc(v) + '</div><div class="sub">' + esc(sub) + '</div></div>';
  }

  // P(parent | child) with the gate lifted and the decoder cosine of a child and its parent (both stored at the child)
  function edgeHtml(c, child) {
    if (!c.pgiven || c.parent[child] < 0) return '';
    var p = c.pgiven[child], k = c.pcos[child];
    return '<span class="edge" title="P(parent fires | child fires), gate lifted · decoder cosine of child and parent">' +
      'P(parent|child) ' + (p === null ? '–' : fmt(p)) + ' · cos ' + (k === null ? '–' : fmt(k)) + '</span>';
  }

  function treePanel(s, L, f) {
    var c = L.cols, kids = childrenIndex(L)[f] || [], anc = ancestors(L, f);
    var link = function (x, cls, edge) {
      return '<a class="tlink ' + (cls || '') + '" href="' + featHref(s.name, x) + '"><span class="id">#' + x + '</span>' +
        '<span class="lvl">L' + levelOf(s, x) + '</span>' + '<span class="tfreq">' + pct(c.freq[x]) + '</span>' + chips(c.act_tok[x], 'hl') +
        (edge === undefined ? '' : edgeHtml(c, edge)) + '</a>';
    };
    var h = '<section class="panel treepanel" id="treepanel"><h2>Tree <a class="small" href="' + treeHref(s.name, f) + '">open in tree view</a>' +
      (c.pgiven ? ' <span class="muted small">each edge: P(parent fires | child fires) on the codes with the gate lifted, and the decoder cosine</span>' : '') + '</h2>';
    h += '<div class="path"><span class="plabel">parent</span>' + (anc.length ? anc.map(function (a, i) {
      return (i ? '<span class="arrow">›</span>' : '') + (i === anc.length - 1 ? link(a, 'parent', f) : link(a, 'anc'));
    }).join('') : '<span class="muted">none: a root (level-0) feature</span>') + '</div>';
    h += '<div class="path"><span class="plabel">children</span>' + (kids.length ? kids.map(function (k) { return link(k, 'child', k); }).join('')
      : '<span class="muted">none: a leaf (last level)</span>') + '</div></section>';
    return h;
  }

  function contextsHtml(s, rec, V, ctx, fmax) {
    if (!rec.x.length) return '<p class="muted">This feature never fires on the held-out tokens.</p>';
    var scale = fmax > 0 ? fmax : 1;
    return '<div class="contexts">' + rec.x.map(function (x) {
      var ci = x[0], start = x[1], peak = x[2], val = x[3], pairs = x[4];
      var acts = {};
      for (var i = 0; i < pairs.length; i += 2) acts[pairs[i]] = pairs[i + 1];
      var C = ctx[ci];
      var toks = C ? C.tokens : [];
      var width = INDEX.settings.window ? INDEX.settings.window[0] + INDEX.settings.window[1] + 1 : 33;
      var end = Math.min(toks.length, start + width);
      var out = [];
      if (start > 0) out.push('<span class="ell">…</span>');
      for (var p = start; p < end; p++) {
        var a = acts[p - start] || 0;
        var alpha = Math.min(1, a / scale);
        var cls = 'ct' + (p === peak ? ' peak' : '') + (p === 0 ? ' sink' : '') + (a > 0 ? ' on' : '');
        var style = a > 0 ? ' style="background:rgba(255,138,0,' + (0.1 + 0.75 * alpha).toFixed(3) + ')"' : '';
        out.push('<span class="' + cls + '"' + style + ' title="position ' + p + (p === 0 ? ' (attention sink)' : '') +
          ' · activation ' + fmt(a) + '">' + esc(tokText(V[toks[p]] !== undefined ? V[toks[p]] : '?', false)) + '</span>');
      }
      if (end < toks.length) out.push('<span class="ell">…</span>');
      return '<div class="ctx"><div class="cval" title="max activation in this context">' + fmt(val) + '</div>' +
        '<div class="ctext">' + out.join('') + '</div><div class="cid" title="held-out context ' + ci +
        (C ? ' (cache context ' + C.id + ')' : '') + ', peak at position ' + peak + '">ctx ' + (C ? C.id : ci) + ' · pos ' + peak + '</div></div>';
    }).join('') + '</div>';
  }

  // ---------------------------------------------------------------- charts (inline SVG)
  var W = 520, H = 210, PAD = { l: 48, r: 12, t: 12, b: 34 };
  function niceTicks(max, n, minStep) {
    if (!(max > 0)) return [0];
    var step = Math.pow(10, Math.floor(Math.log10(max / n)));
    [1, 2, 5, 10].some(function (m) { if (max / (step * m) <= n) { step *= m; return true; } return false; });
    if (minStep && step < minStep) step = minStep;
    var out = [];
    for (var i = 0; i * step <= max * 1.0001; i++) out.push(i * step);
    if (out[out.length - 1] < max) out.push(out.length * step);  // the top tick covers the maximum
    return out;
  }
  function yAxis(max, fmtf, minStep) {
    var ticks = niceTicks(max, 4, minStep), ih = H - PAD.t - PAD.b;
    return ticks.map(function (v) {
      var y = PAD.t + ih - v / max * ih;
      return '<line class="gridl" x1="' + PAD.l + '" x2="' + (W - PAD.r) + '" y1="' + y.toFixed(1) + '" y2="' + y.toFixed(1) + '"/>' +
        '<text class="ax" x="' + (PAD.l - 6) + '" y="' + (y + 4).toFixed(1) + '" text-anchor="end">' + esc(fmtf(v)) + '</text>';
    }).join('');
  }
  function histSvg(h) {
    if (!h || !h.length) return '<p class="muted">No non-zero activations.</p>';
    var b0 = h[0], counts = h.slice(1), nb = counts.length;
    var lo = Math.max(0, b0 - 1), hi = Math.min(EDGES.length - 1, b0 + nb + 1);
    var x0 = Math.log10(EDGES[lo]), x1 = Math.log10(EDGES[hi]);
    var iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
    var X = function (e) { return PAD.l + (Math.log10(e) - x0) / (x1 - x0) * iw; };
    var max = Math.max.apply(null, counts.concat([1]));
    var yt = niceTicks(max, 4, 1), ymax = yt[yt.length - 1];
    var bars = counts.map(function (cnt, i) {
      var a = X(EDGES[b0 + i]), b = X(EDGES[b0 + i + 1]), y = PAD.t + ih - cnt / ymax * ih;
      return cnt ? '<rect class="bar" x="' + (a + 0.5).toFixed(1) + '" y="' + y.toFixed(1) + '" width="' + Math.max(1, b - a - 1).toFixed(1) +
        '" height="' + (PAD.t + ih - y).toFixed(1) + '"><title>' + fmt(EDGES[b0 + i]) + '–' + fmt(EDGES[b0 + i + 1]) + ': ' + cnt + ' tokens</title></rect>' : '';
    }).join('');
    var xt = '', mult = x1 - x0 <= 2.5 ? [1, 2, 5] : [1];  // 1-2-5 ticks on narrow ranges, decades otherwise
    for (var d = Math.floor(x0); d <= Math.ceil(x1); d++) {
      mult.forEach(function (m) {
        var v = m * Math.pow(10, d), lv = Math.log10(v);
        if (lv < x0 - 1e-9 || lv > x1 + 1e-9) return;
        var x = X(v);
        xt += '<line class="tick" x1="' + x.toFixed(1) + '" x2="' + x.toFixed(1) + '" y1="' + (PAD.t + ih) + '" y2="' + (PAD.t + ih + 4) + '"/>' +
          '<text class="ax" x="' + x.toFixed(1) + '" y="' + (PAD.t + ih + 17) + '" text-anchor="middle">' + fmt(Number(v.toPrecision(3))) + '</text>';
      });
    }
    return '<svg class="chart" viewBox="0 0 ' + W + ' ' + H + '" role="img" aria-label="activation histogram">' + yAxis(ymax, fmt, 1) + bars + xt +
      '<line class="axis" x1="' + PAD.l + '" x2="' + (W - PAD.r) + '" y1="' + (PAD.t + ih) + '" y2="' + (PAD.t + ih) + '"/>' +
      '<text class="axt" x="' + (PAD.l + iw / 2) + '" y="' + (H - 3) + '" text-anchor="middle">activation (log scale)</text></svg>';
  }
  function posSvg(q, firstCounted) {
    if (!q || q.length < 2) return '';
    var p = q.slice(1).map(function (v) { return v * q[0] / 1000; });  // [scale, q...] -> values
    var n = p.length, iw = W - PAD.l - PAD.r, ih = H - PAD.t - PAD.b;
    var rest = p.slice(firstCounted ? 1 : 0);
    var m = Math.max.apply(null, rest.concat([0]));
    var clip = firstCounted && p[0] > 1.15 * m && m > 0;
    var max = clip ? m : Math.max(m, p[0]);
    if (!(max > 0)) return '<p class="muted">Zero at every position.</p>';
    var yt = niceTicks(max, 4), ymax = yt[yt.length - 1];
    var bw = iw / n;
    var bars = p.map(function (v, i) {
      var hv = Math.min(v, ymax) / ymax * ih;
      return v > 0 ? '<rect class="bar' + (i === 0 ? ' sink' : '') + '" x="' + (PAD.l + i * bw + 0.15).toFixed(2) + '" y="' + (PAD.t + ih - hv).toFixed(1) +
        '" width="' + Math.max(0.6, bw - 0.3).toFixed(2) + '" height="' + hv.toFixed(1) + '"><title>position ' + i + ': ' + fmt(v) + '</title></rect>' : '';
    }).join('');
    var xt = '';
    var step = n > 64 ? 16 : n > 16 ? 8 : 2;
    for (var i = 0; i < n; i += step) {
      var x = PAD.l + (i + 0.5) * bw;
      xt += '<text class="ax" x="' + x.toFixed(1) + '" y="' + (PAD.t + ih + 17) + '" text-anchor="middle">' + i + '</text>';
    }
    var note = clip ? '<text class="sinknote" x="' + (PAD.l + 6) + '" y="' + (PAD.t + 10) + '">↑ position 0: ' + esc(fmt(p[0])) + ' (clipped)</text>' : '';
    return '<svg class="chart" viewBox="0 0 ' + W + ' ' + H + '" role="img" aria-label="mean activation by position">' + yAxis(ymax, fmt) + bars + xt + note +
      '<line class="axis" x1="' + PAD.l + '" x2="' + (W - PAD.r) + '" y1="' + (PAD.t + ih) + '" y2="' + (PAD.t + ih) + '"/>' +
      '<text class="axt" x="' + (PAD.l + iw / 2) + '" y="' + (H - 3) + '" text-anchor="middle">token position (mean over held-out contexts, zeros included)</text></svg>';
  }

  function logitHtml(rec, V) {
    if (!rec.lp) return '<p class="muted">No unembedding of this width (the SAE does not read the residual stream).</p>';
    var rows = function (arr, cls) {
      var max = 0, i, out = [];
      for (i = 1; i < arr.length; i += 2) max = Math.max(max, Math.abs(arr[i]));
      for (i = 0; i < arr.length; i += 2) {
        var w = max > 0 ? Math.abs(arr[i + 1]) / max * 100 : 0;
        out.push('<div class="lrow"><span class="tok ' + cls + '">' + esc(tokText(V[arr[i]] !== undefined ? V[arr[i]] : '?', true)) + '</span>' +
          '<span class="lbar ' + cls + '"><span style="width:' + w.toFixed(1) + '%"></span></span><span class="lval">' + fmt(arr[i + 1]) + '</span></div>');
      }
      return out.join('');
    };
    return '<div class="logits"><div><h3>promoted</h3>' + rows(rec.lp, 'up') + '</div><div><h3>suppressed</h3>' + rows(rec.ln, 'down') + '</div></div>' +
      '<p class="note" title="' + esc(INDEX.settings.logit_choice || '') + '">Per unit activation: W_dec[f] × final-norm scale @ W_U (the norm\'s 1/RMS, a positive per-token factor, is left out).</p>';
  }

  function matchesHtml(rec) {
    if (!rec.m || !rec.m.length) return '<p class="muted">No other SAE with the same input width.</p>';
    var rows = rec.m.slice().sort(function (a, b) { return (b[2] - a[2]) || a[0] - b[0]; });
    var SHOW = 8;
    var tr = function (r) {
      var o = SAES[r[0]], cells = [];
      for (var i = 1; i < r.length; i += 2) {
        var cos = r[i + 1] / 1000;
        var g = Math.max(0, Math.min(1, cos));
        cells.push('<a class="match" href="' + featHref(o.name, r[i]) + '" data-cos="' + cos + '" style="--g:' + g.toFixed(3) + '">#' + r[i] +
          '<span class="cos">' + cos.toFixed(2) + '</span></a>');
      }
      var m = o.meta || {};
      return '<tr><td class="mname"><a href="' + listHref(o.name) + '">' + esc(o.name) + '</a><div class="msub">' + esc(o.architecture) +
        (m.layer !== undefined && m.layer !== null ? ' · layer ' + esc(m.layer) : '') + (corpusOf(m) ? ' · ' + esc(corpusOf(m)) : '') + '</div></td>' +
        '<td class="mcells">' + cells.join('') + '</td></tr>';
    };
    var h = '<table class="matches"><tbody>' + rows.slice(0, SHOW).map(tr).join('') + '</tbody></table>';
    if (rows.length > SHOW) {
      h += '<details class="more"><summary>' + (rows.length - SHOW) + ' more SAEs (lower best cosine)</summary>' +
        '<table class="matches"><tbody>' + rows.slice(SHOW).map(tr).join('') + '</tbody></table></details>';
    }
    return h;
  }

  // ------------------------------------------------------------------------------ router
  function route() {
    var gen = ++token;
    var h = location.hash.replace(/^#\/?/, '');
    var parts = h.split('/').map(function (x) { try { return decodeURIComponent(x); } catch (e) { return x; } });
    window.scrollTo(0, 0);
    document.body.dataset.view = 'loading';
    if (!parts[0]) return renderIndex();
    if (parts[0] === 'sae' && parts.length >= 2) {
      if (parts.length === 2 || parts[2] === '') return renderList(parts[1], gen);
      if (parts[2] === 'feature') return renderFeature(parts[1], parseInt(parts[3], 10), gen);
      if (parts[2] === 'tree') return renderTree(parts[1], parts[3] !== undefined ? parseInt(parts[3], 10) : undefined, gen);
    }
    fail('Unknown page: #' + h);
  }
  document.addEventListener('keydown', function (e) {
    if (e.target.tagName === 'INPUT' || e.metaKey || e.ctrlKey || e.altKey) return;
    if (document.body.dataset.view === 'feature') {
      var a = document.getElementById(e.key === 'ArrowLeft' ? 'prev' : e.key === 'ArrowRight' ? 'next' : '');
      if (a) location.hash = a.getAttribute('href');
    } else if (e.key === '/' && document.getElementById('q')) {
      e.preventDefault();
      document.getElementById('q').focus();
    }
  });
  window.addEventListener('hashchange', route);
  route();
})();
