// shoal dashboard: vanilla JS, no build step. Served as /assets/app.js for both pages
// (body[data-page] tells which). Strict CSP: no inline code, DOM built with createElement.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);

  // Element builder: attrs are set with setAttribute (true → "", false/null → skipped);
  // "class" and "text" are shortcuts. Children: nodes or strings (text, never HTML).
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const k in attrs) {
        const v = attrs[k];
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const kid of kids.flat(2)) {
      if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  // ---- login page ----------------------------------------------------------------------
  if (document.body.dataset.page === 'login') {
    const q = new URLSearchParams(location.search);
    const msg = q.has('failed') ? 'Wrong password.'
      : q.has('expired') ? 'Your session expired; log in again.'
      : q.has('unset') ? 'No admin password is set: run `shoal dashboard password` on a manager.'
      : q.has('unavailable') ? 'This node is not a swarm manager (or is locked): open the dashboard on a manager.'
      : q.has('wait') ? `Too many failed logins: try again in ${Number(q.get('wait')) || 1} s.`
      : '';
    const el = $('login-message');
    if (el && msg) {
      el.textContent = msg;
      el.dataset.kind = q.has('expired') ? 'info' : 'error';
    }
    const form = document.querySelector('form');
    if (form) form.addEventListener('submit', () => { $('login').disabled = true; });
    return;
  }
  if (document.body.dataset.page !== 'app') return;

  // ---- formatting ----------------------------------------------------------------------
  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  function bytes(n) {
    n = Number(n) || 0;
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
    return (i === 0 || n >= 100 ? Math.round(n) : n.toFixed(1)) + ' ' + UNITS[i];
  }
  const num = (x) => (Number.isInteger(x) ? String(x) : (Number(x) || 0).toFixed(1));
  const pad = (x) => String(x).padStart(2, '0');
  function when(t) {
    const d = typeof t === 'number' ? new Date(t) : new Date(t || NaN);
    if (isNaN(d)) return t ? String(t) : '—';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const short = (id) => String(id || '').replace(/^sha256:/, '').slice(0, 12);
  const labels = (l) => Object.entries(l || {}).map(([k, v]) => (v ? `${k}=${v}` : k)).join(', ');
  const ports = (ps) => (ps || []).map((p) => `${p.published}:${p.target}/${p.protocol}${p.mode === 'host' ? ' (host)' : ''}`).join(', ');

  // A stable hue per service name (FNV-1a), cached.
  const hues = new Map();
  function hue(name) {
    let v = hues.get(name);
    if (v === undefined) {
      let x = 0x811c9dc5;
      for (let i = 0; i < name.length; i++) { x ^= name.charCodeAt(i); x = Math.imul(x, 0x01000193); }
      v = (x >>> 0) % 360;
      hues.set(name, v);
    }
    return v;
  }

  // ---- status, errors ------------------------------------------------------------------
  let statusTimer = 0;
  function status(text) {
    clearTimeout(statusTimer);
    $('status').textContent = text;
    if (text) statusTimer = setTimeout(() => { $('status').textContent = ''; }, 8000);
  }
  function showError(msg) {
    $('error').textContent = msg;
    $('error-bar').hidden = false;
  }
  function clearError() {
    $('error').textContent = '';
    $('error-bar').hidden = true;
  }
  $('error-dismiss').addEventListener('click', clearError);

  // ---- server calls --------------------------------------------------------------------
  let csrf = null;
  let leaving = false;
  function toLogin(why) {
    leaving = true;
    location.assign(why ? `/login?${why}=1` : '/login');
  }
  async function loadSession() {
    const s = await api('GET', '/api/session');
    csrf = s && s.csrf;
    return s;
  }
  async function failure(res) {
    const text = await res.text().catch(() => '');
    let msg = '';
    try { msg = JSON.parse(text).message || ''; } catch (_) { msg = text.trim().slice(0, 500); }
    return Object.assign(new Error(msg || `${res.status} ${res.statusText}`), { status: res.status });
  }
  // JSON call. Non-GET sends the CSRF token; 401 → login; errors carry the server's message.
  async function api(method, path, body, retried) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') {
      if (!csrf) await loadSession();
      headers['X-CSRF-Token'] = csrf;
    }
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.status === 401) { toLogin('expired'); throw new Error('Your session expired.'); }
    if (!res.ok) {
      const err = await failure(res);
      if (res.status === 403 && method !== 'GET' && !retried && /csrf/i.test(err.message)) {
        csrf = null;
        return api(method, path, body, true);
      }
      throw err;
    }
    const text = await res.text();
    if (!text) return null;
    try { return JSON.parse(text); } catch (_) { return text; }
  }
  const docker = (method, path, body) => api(method, '/api/docker' + path, body);
  // A streamed GET: resolves to the Response once its status is known to be fine.
  async function openStream(path, signal) {
    const res = await fetch(path, { credentials: 'same-origin', signal });
    if (res.status === 401) { toLogin('expired'); throw new Error('Your session expired.'); }
    if (!res.ok || !res.body) throw await failure(res);
    return res;
  }

  // ---- dialog (prompts and confirmations) ----------------------------------------------
  // ask({message, input: {label, value, type, min}, ok, danger}) → value string / true, or null.
  function ask(o) {
    const d = $('dialog'), inp = $('dialog-input'), ok = $('dialog-ok');
    if (d.open) return Promise.reject(new Error('Answer the open question first.'));
    $('dialog-message').textContent = o.message;
    ok.textContent = o.ok || 'OK';
    ok.classList.toggle('danger', !!o.danger);
    const i = o.input;
    inp.hidden = inp.disabled = !i;
    inp.required = !!i;
    if (i) {
      inp.type = i.type || 'text';
      if (i.min != null) inp.setAttribute('min', i.min); else inp.removeAttribute('min');
      inp.value = i.value == null ? '' : String(i.value);
      inp.setAttribute('aria-label', i.label);
    }
    d.returnValue = '';
    return new Promise((resolve) => {
      d.addEventListener('close', () => {
        resolve(d.returnValue === 'ok' ? (i ? inp.value.trim() : true) : null);
      }, { once: true });
      d.showModal();
      if (i) { inp.focus(); inp.select(); } else if (o.danger) $('dialog-cancel').focus(); else ok.focus();
    });
  }
  $('dialog-cancel').addEventListener('click', () => $('dialog').close('cancel'));

  // ---- state, routing, rendering -------------------------------------------------------
  const ROUTES = ['visualizer', 'services', 'stacks', 'nodes', 'networks', 'volumes', 'secrets', 'images', 'floating', 'events'];
  const LIVE_ROUTES = new Set(['visualizer', 'services', 'stacks', 'nodes', 'floating', 'images']);
  let view = null; // the latest View
  let svcById = new Map(), svcByName = new Map(), nodeById = new Map(), nodeByName = new Map();
  let route = '';
  const busy = new Set(); // keys of actions running

  function indexView() {
    svcById = new Map(); svcByName = new Map(); nodeById = new Map(); nodeByName = new Map();
    for (const s of view.services) { svcById.set(s.id, s); svcByName.set(s.name, s); }
    for (const n of view.nodes) { nodeById.set(n.id, n); nodeByName.set(n.hostname, n); }
  }

  // Renders at most once a frame and at most 5 times a second (views can come 10 a
  // second; with 1,000 tasks a render and its layout take tens of milliseconds).
  let frame = 0, timer = 0, last = -1e9;
  function schedule() {
    if (frame || timer) return;
    const wait = last + 200 - performance.now();
    if (wait > 0) timer = setTimeout(() => { timer = 0; schedule(); }, wait);
    // Only a drawn view counts: the first view after start-up is drawn at once.
    else frame = requestAnimationFrame(() => { frame = 0; if (view) last = performance.now(); render(); });
  }

  function keyOf(b) {
    return b.dataset.action + '|' + (b.dataset.serviceName ?? b.dataset.hostname ?? b.dataset.stack ?? '');
  }
  function findButton(root, key) {
    for (const b of root.querySelectorAll('button[data-action]')) if (keyOf(b) === key) return b;
    return null;
  }
  // Replaces a container's content, keeping keyboard focus on the same action button.
  function replace(el, ...kids) {
    const a = document.activeElement;
    const key = a && a.dataset && a.dataset.action && el.contains(a) ? keyOf(a) : null;
    el.replaceChildren(...kids);
    if (key) { const b = findButton(el, key); if (b) b.focus({ preventScroll: true }); }
  }

  function button(action, text, label, data) {
    const b = h('button', Object.assign({ type: 'button', 'data-action': action, 'aria-label': label }, data), text);
    if (busy.has(keyOf(b))) b.disabled = true;
    if (action === 'remove' || action === 'remove-stack' || action === 'drain' || action === 'demote') b.classList.add('danger');
    return b;
  }
  const empty = (text) => h('p', { class: 'empty' }, text);
  function table(caption, heads, rows) {
    return h('table', null,
      h('caption', { class: 'sr-only' }, caption),
      h('thead', null, h('tr', null, heads.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, rows));
  }
  function row(attrs, heads, cells) {
    return h('tr', attrs, cells.map((c, i) => h('td', { 'data-label': heads[i] }, c)));
  }
  // An image without its digest (as `docker service ls` shows it); the whole one as a tooltip.
  const image = (i) => h('span', { class: 'mono nowrap', title: i }, String(i || '').split('@')[0]);
  // Code-unit order, as the server sorts (not the locale's).
  const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  const badge = (text, kind) => h('span', { class: 'badge', 'data-kind': kind || text }, text);

  function render() {
    if (!view) return;
    const c = view.cluster || {};
    const leader = c.leader && nodeById.get(c.leader);
    $('cluster').textContent = `${c.name || 'default'} · ${view.nodes.length} node${view.nodes.length === 1 ? '' : 's'}, ${c.managers} manager${c.managers === 1 ? '' : 's'} · leader ${leader ? leader.hostname : c.leader ? short(c.leader) : 'none'}`;
    switch (route) {
      case 'visualizer': renderVisualizer(); break;
      case 'services': renderServices(); break;
      case 'stacks': renderStacks(); break;
      case 'nodes': renderNodes(); break;
      case 'floating': renderFloating(); break;
      case 'images': renderImages(); break;
    }
  }

  const TERMINAL = new Set(['shutdown', 'complete', 'failed', 'rejected', 'orphaned', 'remove']);
  const shown = (t) => t.desired === 'running' || t.desired === 'complete' || !TERMINAL.has(t.state);

  function renderVisualizer() {
    const nodes = [...view.nodes].sort((a, b) => cmp(a.hostname, b.hostname));
    const per = new Map(nodes.map((n) => [n.id, []]));
    const unassigned = [];
    let count = 0, running = 0;
    for (const t of view.tasks) {
      if (!shown(t)) continue;
      count++;
      if (t.state === 'running') running++;
      (per.get(t.node) || unassigned).push(t);
    }
    const name = (t) => (svcById.get(t.service) || {}).name || short(t.service);
    const order = (a, b) => cmp(name(a), name(b)) || a.slot - b.slot || (a.id < b.id ? -1 : 1);
    const frag = document.createDocumentFragment();
    for (const n of nodes) {
      const tasks = per.get(n.id).sort(order);
      const res = [`${num(n.cpus)} CPU${n.cpus === 1 ? '' : 's'}`, bytes(n.memory)];
      if (n.cpu_used_percent != null) res.push(`CPU ${num(n.cpu_used_percent)}% in use`, `${bytes(n.memory_used)} used`);
      if (n.cpus_reserved || n.memory_reserved) res.push(`reserved ${num(n.cpus_reserved || 0)} CPU, ${bytes(n.memory_reserved || 0)}`);
      const col = h('section', {
        class: 'node-column', 'data-node-id': n.id, 'data-hostname': n.hostname,
        'data-node-state': n.state, 'data-availability': n.availability, 'aria-label': `Node ${n.hostname}`,
      },
      h('header', { class: 'column-head' },
        h('h3', null, n.hostname),
        h('p', { class: 'badges' }, badge(n.role), n.leader && badge('leader'), badge(n.state), badge(n.availability)),
        h('p', { class: 'resources' }, res.join(' · '))),
      tasks.length ? tasks.map((t) => card(t, name(t), false)) : empty('No tasks'));
      frag.append(col);
    }
    frag.append(h('section', { class: 'unassigned-column', 'aria-label': 'Unassigned tasks' },
      h('header', { class: 'column-head' }, h('h3', null, 'Unassigned'),
        h('p', { class: 'resources' }, `${unassigned.length} pending`)),
      unassigned.length ? unassigned.sort(order).map((t) => card(t, name(t), true)) : empty('None')));
    replace($('c-visualizer'), frag);
    $('summary').textContent = `${nodes.length} nodes · ${view.services.length} services · ${running}/${count} tasks running`;
  }

  function card(t, svc, pending) {
    const el = h('article', { class: 'task-card', 'data-task-id': t.id, 'data-service-name': svc, 'data-state': t.state },
      h('span', { class: 'task-name' }, t.slot ? `${svc}.${t.slot}` : svc),
      h('span', { class: 'task-state' }, t.state === t.desired || t.desired === 'running' ? t.state : `${t.state} → ${t.desired}`));
    let why = t.error || (t.state !== 'running' ? t.message : '');
    if (pending) {
      const s = svcById.get(t.service);
      if (s && s.pending && s.pending.length) why = s.pending.join('; ');
    }
    if (why) el.append(h('span', { class: 'task-why' }, why));
    el.title = `${t.id}${t.message ? ' · ' + t.message : ''}`;
    el.style.setProperty('--hue', hue(svc));
    return el;
  }

  const SVC_HEADS = ['Name', 'Stack', 'Mode', 'Running', 'Image', 'Ports', 'Update', 'Pending', 'Actions'];
  function renderServices() {
    const rows = view.services.map((s) => {
      const n = s.name, d = { 'data-service-name': n };
      const acts = h('div', { class: 'actions' },
        s.mode === 'replicated' && button('scale', 'Scale', `Scale ${n}`, d),
        button('image', 'Update image', `Update image of ${n}`, d),
        button('rollback', 'Roll back', `Roll back ${n}`, d),
        button('force', 'Force update', `Force update ${n}`, d),
        button('logs', 'Logs', `Logs of ${n}`, d),
        button('remove', 'Remove', `Remove ${n}`, d));
      const nameCell = h('span', { class: 'svc-name' }, n);
      nameCell.style.setProperty('--hue', hue(n));
      const ok = s.running >= s.desired;
      return row({ 'data-service-name': n }, SVC_HEADS, [
        nameCell, s.stack || '—', s.mode,
        h('span', { class: ok ? 'count ok' : 'count short' }, `${s.running}/${s.desired}`),
        image(s.image), ports(s.ports) || '—',
        s.update ? h('span', { title: s.update.message }, s.update.state) : '—',
        (s.pending || []).join('; ') || '—', acts]);
    });
    replace($('c-services'), rows.length ? table('Services', SVC_HEADS, rows) : empty('No services.'));
  }

  const STACK_HEADS = ['Service', 'Mode', 'Running', 'Image'];
  function renderStacks() {
    const groups = new Map();
    for (const s of view.services) {
      const k = s.stack || '';
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(s);
    }
    const names = [...groups.keys()].sort((a, b) => (a === '') - (b === '') || cmp(a, b));
    const frag = document.createDocumentFragment();
    for (const k of names) {
      const list = groups.get(k);
      const run = list.reduce((a, s) => a + s.running, 0), want = list.reduce((a, s) => a + s.desired, 0);
      frag.append(h('section', { class: 'stack', 'data-stack': k || null, 'aria-label': k ? `Stack ${k}` : 'Services not in a stack' },
        h('div', { class: 'view-head' },
          h('h3', null, k || 'Not in a stack'),
          h('p', { class: 'summary' }, `${list.length} service${list.length === 1 ? '' : 's'} · ${run}/${want} tasks running`),
          k && button('remove-stack', 'Remove stack', `Remove stack ${k}`, { 'data-stack': k })),
        h('div', { class: 'table-wrap' }, table(k ? `Services of stack ${k}` : 'Services not in a stack', STACK_HEADS,
          list.map((s) => row({ 'data-service-name': s.name }, STACK_HEADS, [
            s.name, s.mode, `${s.running}/${s.desired}`, image(s.image)]))))));
    }
    replace($('c-stacks'), names.length ? frag : empty('No services.'));
  }

  const NODE_HEADS = ['Hostname', 'Role', 'Leader', 'State', 'Availability', 'Address', 'Engine', 'CPUs', 'Memory', 'Actions'];
  function renderNodes() {
    const nodes = [...view.nodes].sort((a, b) => cmp(a.hostname, b.hostname));
    const rows = nodes.map((n) => {
      const d = { 'data-hostname': n.hostname }, hn = n.hostname;
      const acts = h('div', { class: 'actions' },
        n.availability !== 'active' && button('activate', 'Activate', `Activate ${hn}`, d),
        n.availability !== 'pause' && button('pause', 'Pause', `Pause ${hn}`, d),
        n.availability !== 'drain' && button('drain', 'Drain', `Drain ${hn}`, d),
        n.role === 'manager' ? button('demote', 'Demote', `Demote ${hn}`, d) : button('promote', 'Promote', `Promote ${hn}`, d));
      return row({ 'data-hostname': hn, 'data-node-state': n.state }, NODE_HEADS, [
        hn, n.role, n.leader ? badge('leader') : '—', badge(n.state), badge(n.availability), n.addr || '—',
        n.engine || '—',
        n.cpu_used_percent != null ? `${num(n.cpus)} (${num(n.cpu_used_percent)}% busy)` : num(n.cpus),
        n.memory_used != null ? `${bytes(n.memory_used)} of ${bytes(n.memory)}` : bytes(n.memory), acts]);
    });
    replace($('c-nodes'), rows.length ? table('Nodes', NODE_HEADS, rows) : empty('No nodes.'));
  }

  const FLOAT_HEADS = ['Address', 'Holder', 'Lease'];
  function renderFloating() {
    const rows = (view.floating || []).map((f) => {
      const n = f.holder && nodeById.get(f.holder);
      return row(null, FLOAT_HEADS, [h('span', { class: 'mono' }, f.address), n ? n.hostname : f.holder || '—', f.lease]);
    });
    replace($('c-floating'), rows.length ? table('Floating IPs', FLOAT_HEADS, rows) : empty('No floating addresses.'));
  }

  // Which node has which image (each node reports its engine's list).
  const IMAGE_HEADS = ['Tags', 'ID', 'Platform', 'Size', 'Nodes'];
  function renderImages() {
    const all = view.images || [];
    const rows = all.map((i) => row({ 'data-image-id': i.id }, IMAGE_HEADS, [
      h('span', { class: 'mono' }, i.tags.join(', ') || '<none>'), h('span', { class: 'mono' }, short(i.id)),
      i.platform || '—', bytes(i.size),
      i.nodes.map((n) => (nodeById.get(n) || {}).hostname || short(n)).sort(cmp).join(', ')]));
    replace($('c-images'), rows.length ? table('Images', IMAGE_HEADS, rows) : empty('No images reported yet.'));
  }

  // ---- lists fetched on demand ---------------------------------------------------------
  const loaders = {
    async networks() {
      const H = ['Name', 'ID', 'Driver', 'Scope', 'Subnets'];
      const list = (await docker('GET', '/networks')) || [];
      list.sort((a, b) => cmp(String(a.Name), String(b.Name)));
      fill('networks', 'Networks', H, list.map((n) => [n.Name, h('span', { class: 'mono' }, short(n.Id)), n.Driver, n.Scope,
        ((n.IPAM && n.IPAM.Config) || []).map((c) => c.Subnet).filter(Boolean).join(', ') || '—']), 'No networks.');
    },
    async volumes() {
      const H = ['Name', 'Driver', 'Scope', 'Options'];
      const list = ((await docker('GET', '/volumes')) || {}).Volumes || [];
      list.sort((a, b) => cmp(String(a.Name), String(b.Name)));
      fill('volumes', 'Volumes', H, list.map((v) => [h('span', { class: 'mono' }, v.Name), v.Driver, v.Scope, labels(v.Options) || '—']), 'No volumes.');
    },
    async secrets() {
      const H = ['Name', 'ID', 'Created', 'Updated', 'Labels'];
      // Spec.Data is never shown (secrets do not carry it; configs do).
      const cells = (x) => [(x.Spec || {}).Name, h('span', { class: 'mono' }, short(x.ID)), when(x.CreatedAt), when(x.UpdatedAt), labels((x.Spec || {}).Labels) || '—'];
      const byName = (a, b) => cmp(String((a.Spec || {}).Name), String((b.Spec || {}).Name));
      const [s, c] = await Promise.all([docker('GET', '/secrets'), docker('GET', '/configs')]);
      fill('secrets', 'Secrets', H, (s || []).sort(byName).map(cells), 'No secrets.');
      fill('configs', 'Configs', H, (c || []).sort(byName).map(cells), 'No configs.');
    },
  };
  function fill(id, caption, heads, data, none) {
    replace($('c-' + id), data.length ? table(caption, heads, data.map((cells) => row(null, heads, cells))) : empty(none));
  }
  async function load(which) {
    const el = $('c-' + which);
    if (!el.firstChild) el.append(empty('Loading…'));
    const btn = document.querySelector(`[data-refresh="${which}"]`);
    if (btn) btn.disabled = true;
    try {
      await loaders[which]();
    } catch (e) {
      if (!leaving) { replace(el, empty('Could not load this list.')); showError(e.message); }
    } finally {
      if (btn) btn.disabled = false;
    }
  }
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button[data-refresh]');
    if (b) { clearError(); load(b.dataset.refresh); }
  });

  // ---- events feed (only while the Events view is shown) -------------------------------
  const EV_HEADS = ['Time', 'Type', 'Action', 'Name'];
  const events = [];
  let eventsCtl = null, eventsRetry = 0, eventsFrame = 0;
  function renderEvents() {
    eventsFrame = 0;
    const rows = events.map((e) => {
      const a = e.Actor || {}, at = a.Attributes || {};
      const ms = e.timeNano ? e.timeNano / 1e6 : (e.time || 0) * 1000;
      return row(null, EV_HEADS, [clock(new Date(ms)), e.Type || '', e.Action || e.status || '', at.name || short(a.ID || e.id)]);
    });
    replace($('c-events'), rows.length ? table('Latest events, newest first', EV_HEADS, rows) : empty('No events yet.'));
  }
  async function startEvents() {
    if (eventsCtl) return;
    const ctl = eventsCtl = new AbortController();
    $('events-state').textContent = 'connecting…';
    if (!events.length) renderEvents();
    try {
      const res = await openStream('/api/docker/events', ctl.signal);
      $('events-state').textContent = 'live';
      await readLines(res, ctl.signal, (line) => {
        if (!line.trim()) return;
        try { events.unshift(JSON.parse(line)); } catch (_) { return; }
        if (events.length > 200) events.length = 200;
        if (!eventsFrame) eventsFrame = requestAnimationFrame(renderEvents);
      });
      if (ctl.signal.aborted) return;
      $('events-state').textContent = 'ended; reconnecting…';
    } catch (e) {
      if (ctl.signal.aborted || leaving) return;
      $('events-state').textContent = `${e.message}; retrying…`;
    }
    if (eventsCtl === ctl) {
      eventsCtl = null;
      clearTimeout(eventsRetry);
      eventsRetry = setTimeout(() => { if (route === 'events') startEvents(); }, 3000);
    }
  }
  function stopEvents() {
    clearTimeout(eventsRetry);
    if (eventsCtl) { eventsCtl.abort(); eventsCtl = null; }
    $('events-state').textContent = '';
  }
  async function readLines(res, signal, onLine) {
    const reader = res.body.getReader(), dec = new TextDecoder();
    let rest = '';
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        rest += dec.decode(value, { stream: true });
        const parts = rest.split('\n');
        rest = parts.pop();
        for (const p of parts) onLine(p);
      }
      if (rest) onLine(rest);
    } catch (e) {
      if (!signal.aborted) throw e;
    }
  }

  // ---- logs (Docker's multiplexed stream) ----------------------------------------------
  const MAX_LINES = 2000;
  let logsCtl = null;
  async function openLogs(path, title) {
    const d = $('logs'), pre = $('logs-pre'), st = $('logs-state');
    if (logsCtl) logsCtl.abort();
    const ctl = logsCtl = new AbortController();
    $('logs-title').textContent = title;
    pre.replaceChildren();
    st.textContent = 'connecting…';
    if (!d.open) d.showModal();
    let lines = 0;
    const partial = { 1: '', 2: '' };
    const decoders = { 1: new TextDecoder(), 2: new TextDecoder() };
    const add = (text, err) => {
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
      pre.append(h('span', err ? { class: 'err' } : null, text + '\n'));
      if (++lines > MAX_LINES) { pre.firstChild.remove(); lines--; }
      if (stick) pre.scrollTop = pre.scrollHeight;
    };
    const text = (s, chunk, flush) => {
      let t = partial[s] + decoders[s].decode(chunk, { stream: !flush });
      const parts = t.split('\n');
      partial[s] = flush ? '' : parts.pop();
      for (const p of parts) if (!flush || p) add(p.replace(/\r$/, ''), s === 2);
    };
    try {
      const res = await openStream(path, ctl.signal);
      st.textContent = 'following';
      const reader = res.body.getReader();
      let buf = new Uint8Array(0), raw = null;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (raw === null && value.length) raw = !(value[0] <= 2 && (value.length < 4 || (value[1] | value[2] | value[3]) === 0));
        if (raw) { text(1, value); continue; } // a TTY service: no frames
        const joined = new Uint8Array(buf.length + value.length);
        joined.set(buf); joined.set(value, buf.length);
        buf = joined;
        let off = 0;
        while (buf.length - off >= 8) {
          const len = new DataView(buf.buffer, buf.byteOffset + off + 4, 4).getUint32(0);
          if (buf.length - off - 8 < len) break;
          text(buf[off] === 2 ? 2 : 1, buf.subarray(off + 8, off + 8 + len));
          off += 8 + len;
        }
        buf = buf.slice(off);
      }
      text(1, new Uint8Array(0), true); text(2, new Uint8Array(0), true);
      st.textContent = 'ended';
    } catch (e) {
      if (ctl.signal.aborted) return;
      st.textContent = 'error';
      add(e.message, true);
    }
  }
  let logsOpener = '';
  $('logs').addEventListener('close', () => {
    if (logsCtl) { logsCtl.abort(); logsCtl = null; }
    refocus(logsOpener);
  });
  $('logs-close').addEventListener('click', () => $('logs').close());

  // ---- actions -------------------------------------------------------------------------
  const enc = encodeURIComponent;
  function service(name) {
    const s = svcByName.get(name);
    if (!s) throw new Error(`Service ${name} is gone.`);
    return s;
  }
  function node(name) {
    const n = nodeByName.get(name);
    if (!n) throw new Error(`Node ${name} is gone.`);
    return n;
  }
  // GET the object, change its Spec, POST it back with its version.
  async function update(kind, id, change, query) {
    const obj = await docker('GET', `/${kind}/${enc(id)}`);
    const spec = obj.Spec || {};
    if (change) change(spec);
    return docker('POST', `/${kind}/${enc(id)}/update?version=${enc(obj.Version.Index)}${query || ''}`, spec);
  }
  const warned = (r, text) => {
    const w = r && r.Warnings && r.Warnings.filter(Boolean);
    return w && w.length ? `${text} Warning: ${w.join('; ')}` : text;
  };
  async function setNode(name, field, value, text) {
    const n = node(name);
    await update('nodes', n.id, (spec) => { spec[field] = value; });
    return text;
  }
  const LOG_QUERY = '?follow=1&stdout=1&stderr=1&tail=200&timestamps=1';

  const actions = {
    async scale(b) {
      const s = service(b.dataset.serviceName);
      const v = await ask({ message: `Scale ${s.name} to how many replicas?`, input: { label: `Replicas of ${s.name}`, type: 'number', min: 0, value: s.desired }, ok: 'Scale' });
      if (v == null) return null;
      if (!/^\d+$/.test(v)) throw new Error(`Not a number of replicas: ${v}`);
      const r = await update('services', s.id, (spec) => {
        if (!spec.Mode || !spec.Mode.Replicated) throw new Error(`${s.name} is not a replicated service.`);
        spec.Mode.Replicated.Replicas = Number(v);
      });
      return warned(r, `Scaling ${s.name} to ${v}.`);
    },
    async image(b) {
      const s = service(b.dataset.serviceName);
      const v = await ask({ message: `New image for ${s.name}:`, input: { label: `Image of ${s.name}`, value: s.image }, ok: 'Update' });
      if (v == null) return null;
      if (!v) throw new Error('The image is empty.');
      const r = await update('services', s.id, (spec) => {
        spec.TaskTemplate = spec.TaskTemplate || {};
        spec.TaskTemplate.ContainerSpec = spec.TaskTemplate.ContainerSpec || {};
        spec.TaskTemplate.ContainerSpec.Image = v;
      });
      return warned(r, `Updating ${s.name} to ${v}.`);
    },
    async rollback(b) {
      const s = service(b.dataset.serviceName);
      const r = await update('services', s.id, null, '&rollback=previous');
      return warned(r, `Rolling back ${s.name}.`);
    },
    async force(b) {
      const s = service(b.dataset.serviceName);
      const r = await update('services', s.id, (spec) => {
        spec.TaskTemplate = spec.TaskTemplate || {};
        spec.TaskTemplate.ForceUpdate = (spec.TaskTemplate.ForceUpdate || 0) + 1;
      });
      return warned(r, `Force-updating ${s.name}.`);
    },
    async logs(b) {
      const s = service(b.dataset.serviceName);
      logsOpener = keyOf(b);
      // The whole service, or one of its tasks (chosen in the dialog).
      const sel = $('logs-task');
      const tasks = view.tasks.filter((t) => t.service === s.id);
      sel.replaceChildren(h('option', { value: '' }, `All tasks of ${s.name}`),
        ...tasks.map((t) => h('option', { value: t.id },
          `${s.name}.${t.slot || short(t.id)} on ${(nodeById.get(t.node) || {}).hostname || 'no node'} (${t.state})`)));
      sel.onchange = () => {
        const id = sel.value;
        openLogs(id ? `/api/docker/tasks/${enc(id)}/logs${LOG_QUERY}` : `/api/docker/services/${enc(s.id)}/logs${LOG_QUERY}`,
          id ? `Logs: ${sel.selectedOptions[0].textContent}` : `Logs: ${s.name}`);
      };
      openLogs(`/api/docker/services/${enc(s.id)}/logs${LOG_QUERY}`, `Logs: ${s.name}`);
      return null;
    },
    async remove(b) {
      const s = service(b.dataset.serviceName);
      if (!await ask({ message: `Remove service ${s.name}? Its tasks will be stopped.`, ok: 'Remove', danger: true })) return null;
      await docker('DELETE', `/services/${enc(s.id)}`);
      return `Removed service ${s.name}.`;
    },
    async 'remove-stack'(b) {
      const name = b.dataset.stack;
      if (!await ask({ message: `Remove stack ${name}: its services, networks, secrets and configs?`, ok: 'Remove stack', danger: true })) return null;
      const filter = '?filters=' + enc(JSON.stringify({ label: [`com.docker.stack.namespace=${name}`] }));
      const errors = [];
      let removed = 0;
      const sweep = async (kind, idKey, tries) => {
        const list = (await docker('GET', `/${kind}${filter}`)) || [];
        for (const x of list) {
          for (let i = 1; ; i++) {
            try { await docker('DELETE', `/${kind}/${enc(x[idKey])}`); removed++; break; } catch (e) {
              // Networks stay in use until the stack's tasks are gone: wait a little.
              if (i >= tries) { errors.push(`${kind} ${x.Name || (x.Spec || {}).Name || x[idKey]}: ${e.message}`); break; }
              await new Promise((r) => setTimeout(r, 1000));
            }
          }
        }
      };
      await sweep('services', 'ID', 1);
      await sweep('secrets', 'ID', 1);
      await sweep('configs', 'ID', 1);
      await sweep('networks', 'Id', 10);
      if (errors.length) throw new Error(`Stack ${name}: removed ${removed} objects, but: ${errors.join('; ')}`);
      return `Removed stack ${name} (${removed} objects).`;
    },
    async drain(b) {
      const n = b.dataset.hostname;
      if (!await ask({ message: `Drain ${n}? Its tasks will move to other nodes.`, ok: 'Drain', danger: true })) return null;
      return setNode(n, 'Availability', 'drain', `Draining ${n}.`);
    },
    activate: (b) => setNode(b.dataset.hostname, 'Availability', 'active', `${b.dataset.hostname} is active.`),
    pause: (b) => setNode(b.dataset.hostname, 'Availability', 'pause', `${b.dataset.hostname} is paused.`),
    promote: (b) => setNode(b.dataset.hostname, 'Role', 'manager', `Promoting ${b.dataset.hostname}.`),
    async demote(b) {
      const n = b.dataset.hostname;
      if (!await ask({ message: `Demote ${n} to a worker?`, ok: 'Demote', danger: true })) return null;
      return setNode(n, 'Role', 'worker', `Demoting ${n}.`);
    },
  };

  $('main').addEventListener('click', async (e) => {
    const b = e.target.closest('button[data-action]');
    if (!b || !actions[b.dataset.action]) return;
    const key = keyOf(b);
    if (busy.has(key)) return;
    busy.add(key);
    b.disabled = true;
    clearError();
    try {
      const done = await actions[b.dataset.action](b);
      if (done) status(done);
    } catch (err) {
      if (!leaving) showError(err.message);
    } finally {
      busy.delete(key);
      const now = b.isConnected ? b : findButton($('main'), key);
      if (now) now.disabled = false;
      if (!$('logs').open) refocus(key);
    }
  });
  // After a dialog closes, focus goes back to its opener; that button may have been
  // disabled or re-rendered meanwhile, so put focus on its current twin.
  function refocus(key) {
    setTimeout(() => {
      const a = document.activeElement;
      if (a && a !== document.body) return;
      const b = findButton($('main'), key);
      if (b && !b.disabled) b.focus();
    }, 0);
  }

  // Deploy a pasted compose file: the server converts it as `docker stack deploy` does.
  $('deploy-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const b = $('stack-deploy'), name = $('stack-name').value.trim();
    b.disabled = true;
    clearError();
    try {
      const r = await api('POST', '/api/stacks', { name, compose: $('stack-compose').value });
      const w = (r.warnings || []).length ? ` Warnings: ${r.warnings.join('; ')}` : '';
      status(`Stack ${name}: ${r.created.length} service(s) created, ${r.updated.length} updated.${w}`);
    } catch (err) {
      if (!leaving) showError(err.message);
    } finally {
      b.disabled = false;
    }
  });

  $('logout').addEventListener('click', async () => {
    const b = $('logout');
    b.disabled = true;
    clearError();
    try {
      await api('POST', '/logout');
      toLogin();
    } catch (e) {
      if (!leaving) showError(e.message);
      b.disabled = false;
    }
  });

  // ---- routing -------------------------------------------------------------------------
  function go() {
    let r = location.hash.slice(1);
    if (!ROUTES.includes(r)) r = 'visualizer';
    if (r === route) return;
    const prev = route;
    route = r;
    for (const name of ROUTES) $('view-' + name).hidden = name !== r;
    for (const a of document.querySelectorAll('nav a[data-route]')) {
      if (a.dataset.route === r) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    document.title = `${$('h-' + r).textContent} · shoal dashboard`;
    if (prev === 'events') stopEvents();
    if (r === 'events') startEvents();
    else if (loaders[r]) load(r);
    else if (LIVE_ROUTES.has(r)) schedule();
  }
  window.addEventListener('hashchange', go);

  // ---- the live view (server-sent events) ----------------------------------------------
  function setLive(state, text) {
    const el = $('live');
    el.dataset.state = state;
    el.textContent = text || state;
  }
  let es = null, lastData = '';
  function connect() {
    es = new EventSource('/api/stream');
    es.addEventListener('view', (e) => {
      setLive('live');
      if (e.data === lastData) return;
      lastData = e.data;
      try {
        view = JSON.parse(e.data);
      } catch (_) { return; }
      view.nodes = view.nodes || []; view.services = view.services || []; view.tasks = view.tasks || [];
      indexView();
      schedule();
    });
    // After the first view, each change comes as a delta: every list but the tasks whole, and
    // the tasks that changed or went.
    es.addEventListener('delta', (e) => {
      setLive('live');
      if (!view) return;
      let d;
      try { d = JSON.parse(e.data); } catch (_) { return; }
      const tasks = new Map(view.tasks.map((t) => [t.id, t]));
      for (const id of d.tasks_remove || []) tasks.delete(id);
      for (const t of d.tasks_upsert || []) tasks.set(t.id, t);
      view = {
        cluster: d.cluster, nodes: d.nodes || [], services: d.services || [],
        floating: d.floating || [], images: d.images || [],
        tasks: [...tasks.values()].sort((a, b) => cmp(a.service, b.service) || a.slot - b.slot || cmp(a.id, b.id)),
      };
      lastData = null;
      indexView();
      schedule();
    });
    es.addEventListener('open', () => setLive('live'));
    es.addEventListener('error', () => {
      if (leaving) return;
      setLive('reconnecting', 'reconnecting…');
      if (es.readyState === EventSource.CLOSED) {
        // The server refused the stream (a 401 ends it for good): check the session, retry.
        es.close();
        loadSession().catch(() => {}).finally(() => { if (!leaving) setTimeout(connect, 3000); });
      }
    });
  }

  go();
  loadSession().catch((e) => { if (!leaving) showError(e.message); });
  connect();
})();
