// Switchyard dashboard: one small script, no build step, no dependencies.
//
// Everything comes from the /v1 API with the token the user signed in with. The token lives
// in this tab's sessionStorage and goes out only as an `Authorization` header: never in a URL,
// never in a cookie. Pages are rendered with DOM calls (textContent), never from HTML strings,
// so nothing an agent writes can run here. The live parts follow
// /v1/workspaces/{ws}/timeline/live (server-sent events read through fetch, which can send
// the header that EventSource cannot).
'use strict';

const KEY_TOKEN = 'switchyard.token';
const KEY_WORKSPACE = 'switchyard.workspace';

const app = {
  token: sessionStorage.getItem(KEY_TOKEN),
  session: null,
  workspaces: [],
  workspace: sessionStorage.getItem(KEY_WORKSPACE),
  view: null, // the AbortController of the page on screen
};

// --- DOM -------------------------------------------------------------------------------

/** h('div', {class: 'x', onclick: f}, 'text', child, [more]) */
function h(tag, attrs, ...children) {
  const svg = ['svg', 'g', 'rect', 'path', 'text', 'line', 'circle', 'polyline', 'title', 'defs', 'marker'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);

/** Replaces el's children; arrays are flattened, null/undefined/false skipped. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function toast(message, bad) {
  const el = $('#status');
  el.textContent = message;
  el.classList.toggle('show', true);
  el.style.background = bad ? 'var(--bad)' : '';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove('show'), 4000);
}

function badge(status) {
  const s = String(status ?? '—');
  return h('span', { class: `badge s-${s.replace(/[^a-z_]/gi, '_')}`, 'data-status': s }, s);
}

function typeClass(type) {
  return `t-${String(type).split('.')[0]}`;
}

function when(t, short) {
  if (!t) return '—';
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const today = d.toDateString() === new Date().toDateString();
  const text = short && today ? d.toLocaleTimeString() : d.toLocaleString();
  return h('time', { datetime: d.toISOString(), title: d.toISOString() }, text);
}

function ago(t) {
  if (!t) return '—';
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function table(headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty || 'Nothing yet.');
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: x.startsWith('#') ? 'num' : null }, x.replace(/^#/, ''))))),
      h('tbody', {}, rows)));
}

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

function json(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

function pct(x) {
  return x === null || x === undefined ? '—' : `${Math.round(x * 100)} %`;
}

// --- API -------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${app.token}`, Accept: 'application/json' };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  if (options.method && options.method !== 'GET') headers['X-Switchyard-Channel'] = 'dashboard';
  const res = await fetch(path, {
    method: options.method || 'GET',
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: options.signal,
    cache: 'no-store',
  });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { message: text }; }
  if (res.status === 401 && !options.signIn) {
    signOut('Your token is no longer accepted. Sign in again.');
    throw new ApiFailure(res.status, body);
  }
  if (!res.ok) throw new ApiFailure(res.status, body);
  return body;
}

const ws = () => `/v1/workspaces/${encodeURIComponent(app.workspace)}`;
const can = (what) => Boolean(app.session?.can?.[what]);

/**
 * Follows the live timeline until `signal` aborts: calls onEvent(cloudEvent) for each new
 * event, reconnecting after a failure from the last cursor seen (nothing is missed).
 */
async function follow({ after, filters = {}, onEvent, onState, signal }) {
  let cursor = after || '';
  let backoff = 500;
  while (!signal.aborted) {
    try {
      const q = new URLSearchParams({ after: cursor });
      for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
      const res = await fetch(`${ws()}/timeline/live?${q}`, {
        headers: { Authorization: `Bearer ${app.token}`, Accept: 'text/event-stream' },
        signal,
        cache: 'no-store',
      });
      if (res.status === 401) { signOut('Your token is no longer accepted. Sign in again.'); return; }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const msg = { event: 'message', data: '', id: null };
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
            if (field === 'event') msg.event = val;
            else if (field === 'data') msg.data += (msg.data ? '\n' : '') + val;
            else if (field === 'id') msg.id = val;
          }
          if (msg.event === 'ready') { backoff = 500; onState?.('on'); cursor = msg.data || cursor; }
          else if (msg.event === 'event') {
            if (msg.id) cursor = msg.id;
            try { onEvent(JSON.parse(msg.data)); } catch (e) { console.error(e); }
          } else if (msg.event === 'error') throw new Error(msg.data);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      console.warn('live: reconnecting', e);
    }
    onState?.('off');
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 8000);
  }
}

function liveBadge() {
  const el = h('span', { class: 'live off', 'data-live': 'off', 'aria-live': 'polite' }, 'connecting');
  el.set = (state) => {
    el.className = `live ${state}`;
    el.dataset.live = state;
    el.textContent = state === 'on' ? 'live' : 'reconnecting';
  };
  return el;
}

/** Calls `fn` at most once per `ms`, after the last call. */
function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

// --- Session -----------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY_TOKEN);
  app.token = null;
  app.session = null;
  app.view?.abort();
  $('#top').hidden = true;
  renderLogin(message);
}

function renderLogin(message) {
  const main = $('#main');
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false', 'aria-describedby': 'token-help' });
  const error = h('p', { class: 'error', id: 'login-error', role: 'alert' }, message || '');
  const form = h('form', {
    class: 'card login',
    onsubmit: async (ev) => {
      ev.preventDefault();
      error.textContent = '';
      app.token = input.value.trim();
      try {
        app.session = await api('/v1/session', { signIn: true });
      } catch (e) {
        app.token = null;
        error.textContent = e.status === 401 ? 'This token is not valid (unknown, expired or revoked).' : `Cannot sign in: ${e.message}`;
        return;
      }
      sessionStorage.setItem(KEY_TOKEN, app.token);
      input.value = '';
      await start();
    },
  },
  h('h1', {}, 'Sign in to Switchyard'),
  h('label', { for: 'token' }, 'API token'),
  input,
  h('p', { class: 'muted', id: 'token-help' }, 'A token from ', h('code', {}, 'switchyard tokens create'),
    ' (or the admin token that scripts/up printed). It is kept in this tab only, until you sign out or close it.'),
  error,
  h('button', { type: 'submit', id: 'signin' }, 'Sign in'));
  fill(main, form);
  input.focus();
}

async function start() {
  try {
    app.session = app.session || await api('/v1/session');
    app.workspaces = (await api('/v1/workspaces')).workspaces;
  } catch (e) {
    if (e.status !== 401) renderLogin(`Cannot reach the server: ${e.message}`);
    return;
  }
  if (!app.workspaces.some((w) => w.id === app.workspace)) app.workspace = app.workspaces[0]?.id || null;
  const select = $('#workspace');
  fill(select, ...app.workspaces.map((w) => h('option', { value: w.id, selected: w.id === app.workspace }, `${w.name} (${w.id})`)));
  select.onchange = () => {
    app.workspace = select.value;
    sessionStorage.setItem(KEY_WORKSPACE, app.workspace);
    route();
  };
  if (app.workspace) sessionStorage.setItem(KEY_WORKSPACE, app.workspace);
  $('#who').textContent = `${app.session.name} · ${app.session.scope}${app.session.workspace ? ` · ${app.session.workspace}` : ''}`;
  for (const li of document.querySelectorAll('[data-needs]')) li.hidden = !can(li.dataset.needs);
  $('#signout').onclick = () => signOut('Signed out.');
  $('#top').hidden = false;
  if (!location.hash || location.hash === '#') location.hash = '#/timeline';
  else route();
}

// --- Routing -----------------------------------------------------------------------------

const pages = {};

function route() {
  if (!app.token || !app.session) return;
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const [page, ...rest] = path.split('/').map(decodeURIComponent);
  const render = pages[page] || pages.timeline;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === (pages[page] ? page : 'timeline')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  app.view?.abort();
  const view = new AbortController();
  app.view = view;
  const main = $('#main');
  if (!app.workspace) {
    fill(main, h('h1', {}, 'No workspace yet'), h('p', {}, 'Create one with ', h('code', {}, 'POST /v1/workspaces'), ' or scripts/up.'));
    return;
  }
  fill(main, h('p', { class: 'muted' }, 'Loading…'));
  Promise.resolve(render({ args: rest, query: new URLSearchParams(query || ''), signal: view.signal }))
    .then((nodes) => {
      if (view.signal.aborted || !nodes) return;
      fill(main, ...[nodes].flat());
      const title = main.querySelector('h1');
      document.title = `${title ? title.textContent : 'Switchyard'} · Switchyard`;
      // Screen readers and keyboards start at the new page's heading.
      if (title && !main.contains(document.activeElement)) {
        title.setAttribute('tabindex', '-1');
        title.focus({ preventScroll: true });
      }
    })
    .catch((e) => {
      if (view.signal.aborted) return;
      fill(main, h('h1', {}, 'Something went wrong'), h('p', { class: 'error', role: 'alert' }, e.message));
    });
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// --- Timeline ------------------------------------------------------------------------------

function eventRow(e, onSelect) {
  return h('tr', {
    class: 'clickable', tabindex: 0, 'data-type': e.type, 'data-sequence': e.sequence,
    onclick: () => onSelect(e),
    onkeydown: (ev) => { if (ev.key === 'Enter') onSelect(e); },
  },
  h('td', { class: 'num mono' }, e.sequence),
  h('td', { class: 'nowrap' }, when(e.time, true)),
  h('td', {}, h('span', { class: typeClass(e.type) }, e.type)),
  h('td', { class: 'mono' }, e.source),
  h('td', { class: 'mono' }, e.subject || ''));
}

pages.timeline = async ({ query, signal }) => {
  const filters = { type: query.get('type') || '', source: query.get('source') || '', correlation: query.get('correlation') || '' };
  const [schemas, roster] = await Promise.all([api('/v1/schemas', { signal }), api(`${ws()}/agents`, { signal })]);
  const page = await api(`${ws()}/timeline?${new URLSearchParams({ ...filters, limit: 50 })}`, { signal });
  const detail = h('section', { class: 'card', id: 'event-detail', 'aria-label': 'Event' }, h('p', { class: 'muted' }, 'Choose an event to see its CloudEvent and its causation chain.'));
  const select = (e) => {
    for (const tr of tbody.querySelectorAll('tr.selected')) tr.classList.remove('selected');
    tbody.querySelector(`tr[data-sequence="${e.sequence}"]`)?.classList.add('selected');
    showEvent(detail, e.sequence, signal);
  };
  const tbody = h('tbody', { id: 'timeline-rows' }, page.events.map((e) => eventRow(e, select)));
  const live = liveBadge();
  let older = page.older;
  // A narrowed page looks a bounded window back: a short page with a cursor means "search on".
  const moreLabel = (p) => (p.events.length < 50 ? `Search further back (before #${p.older})` : 'Older events');
  const more = h('button', {
    type: 'button', class: 'quiet', hidden: !older,
    onclick: async () => {
      const next = await api(`${ws()}/timeline?${new URLSearchParams({ ...filters, limit: 50, before: older })}`, { signal });
      tbody.append(...next.events.map((e) => eventRow(e, select)));
      older = next.older;
      more.hidden = !older;
      if (older) more.textContent = moreLabel(next);
    },
  }, older ? moreLabel(page) : 'Older events');
  const field = (label, control) => h('label', { class: 'field' }, label, control);
  const typeSelect = h('select', { name: 'type' }, h('option', { value: '' }, 'any type'),
    schemas.schemas.map((s) => h('option', { value: s.type, selected: s.type === filters.type }, s.type)));
  // Any source may be typed; the agents, the API, the scheduler and GitHub are offered.
  const sourceSelect = h('input', { name: 'source', value: filters.source, placeholder: 'any source', list: 'sources', size: 22 });
  const sources = h('datalist', { id: 'sources' },
    h('option', { value: '/api' }, 'people, through the API'),
    (() => {
      const repo = app.workspaces.find((w) => w.id === app.workspace)?.repository;
      return repo?.kind === 'github' ? h('option', { value: `/github/${repo.owner}/${repo.repo}` }, 'GitHub webhooks') : null;
    })(),
    h('option', { value: '/scheduler' }, 'the scheduler'),
    roster.agents.map((a) => h('option', { value: `/agents/${a.name}` }, `agent ${a.name}`)));
  const correlation = h('input', { name: 'correlation', value: filters.correlation, placeholder: 'correlation id', size: 36 });
  const form = h('form', {
    class: 'filters', role: 'search',
    onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (typeSelect.value) q.set('type', typeSelect.value);
      if (sourceSelect.value.trim()) q.set('source', sourceSelect.value.trim());
      if (correlation.value.trim()) q.set('correlation', correlation.value.trim());
      go(`#/timeline${q.toString() ? `?${q}` : ''}`);
    },
  }, field('Type', typeSelect), field('Source', sourceSelect), sources, field('Correlation', correlation),
  h('button', { type: 'submit' }, 'Filter'),
  (filters.type || filters.source || filters.correlation) ? h('a', { href: '#/timeline' }, 'clear') : null);

  follow({
    after: page.live_from, filters, signal, onState: live.set,
    onEvent: (e) => {
      if (tbody.querySelector(`tr[data-sequence="${e.sequence}"]`)) return;
      const row = eventRow(e, select);
      row.classList.add('fresh');
      tbody.prepend(row);
    },
  });
  return [
    h('h1', {}, 'Timeline ', live),
    form,
    h('div', { class: 'split' },
      h('div', {},
        h('div', { class: 'table-wrap' }, h('table', { 'aria-label': 'Events, newest first' },
          h('thead', {}, h('tr', {}, ['#', 'Time', 'Type', 'Source', 'Subject'].map((x) => h('th', { scope: 'col' }, x)))),
          tbody)),
        h('p', {}, more)),
      detail),
  ];
};

pages.event = async ({ args, signal }) => {
  const box = h('section', { class: 'card', id: 'event-detail' });
  await showEvent(box, args[0], signal);
  return [h('h1', {}, `Event ${args[0]}`), box];
};

async function showEvent(box, sequence, signal) {
  fill(box, h('p', { class: 'muted' }, 'Loading…'));
  let d;
  try {
    d = await api(`${ws()}/timeline/${encodeURIComponent(sequence)}`, { signal });
  } catch (e) {
    fill(box, h('p', { class: 'error' }, e.message));
    return;
  }
  const e = d.event;
  const trace = d.trace_id
    ? (app.session.trace_url
      ? h('a', { href: app.session.trace_url.replace('{trace_id}', d.trace_id), target: '_blank', rel: 'noopener noreferrer', class: 'mono' }, d.trace_id)
      : h('code', {}, d.trace_id))
    : '—';
  fill(box, ...[
    h('h2', {}, h('span', { class: typeClass(e.type) }, e.type)),
    facts([
      ['sequence', h('a', { href: `#/event/${e.sequence}` }, String(e.sequence))],
      ['id', h('code', {}, e.id)],
      ['source', h('code', {}, e.source)],
      ['subject', e.subject],
      ['time', when(e.time)],
      ['correlation', h('a', { href: `#/timeline?correlation=${encodeURIComponent(e.correlationid)}` }, e.correlationid)],
      ['trace', trace],
    ]),
    h('h3', {}, 'Causation'),
    causationTree(d.chain, e, (seq) => showEvent(box, seq, signal)),
    d.chain_complete ? null : h('p', { class: 'muted' }, 'The correlation is longer: its newest 200 events are shown.'),
    h('h3', {}, 'CloudEvent'),
    json(e)].filter(Boolean));
}

/** The correlation's events as the tree their `causationid` links draw; `current` in bold. */
function causationTree(chain, current, onPick) {
  const byId = new Map(chain.map((e) => [e.id, e]));
  const children = new Map();
  const roots = [];
  for (const e of chain) {
    const parent = e.causationid && byId.has(e.causationid) && e.causationid !== e.id ? e.causationid : null;
    if (parent) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(e);
    } else roots.push(e);
  }
  const seen = new Set();
  const node = (e) => {
    if (seen.has(e.id)) return null;
    seen.add(e.id);
    const kids = children.get(e.id) || [];
    const isCurrent = e.sequence === current.sequence;
    return h('li', { 'data-sequence': e.sequence },
      h('button', { type: 'button', class: `node ${isCurrent ? 'current' : ''}`, 'aria-current': isCurrent ? 'true' : null, onclick: () => onPick(e.sequence) },
        `${e.type} `, h('span', { class: 'muted' }, `#${e.sequence} ${e.source}`)),
      kids.length ? h('ul', {}, kids.map(node)) : null);
  };
  return h('ul', { class: 'tree', 'aria-label': 'Causation chain' }, roots.map(node));
}

// --- Proposals -------------------------------------------------------------------------------

function proposalRow(p) {
  return h('tr', { class: 'clickable', tabindex: 0, 'data-id': p.id, 'data-status': p.status,
    onclick: () => go(`#/proposals/${encodeURIComponent(p.id)}`),
    onkeydown: (ev) => { if (ev.key === 'Enter') go(`#/proposals/${encodeURIComponent(p.id)}`); } },
  h('td', {}, h('a', { href: `#/proposals/${encodeURIComponent(p.id)}` }, p.title)),
  h('td', {}, badge(p.status)),
  h('td', {}, p.author),
  h('td', {}, when(p.created_at)),
  h('td', {}, p.decided_by || '—'),
  h('td', { class: 'mono' }, p.commit_sha ? p.commit_sha.slice(0, 10) : (p.pull_request_url ? h('a', { href: p.pull_request_url, rel: 'noopener noreferrer' }, 'PR') : '—')));
}

pages.proposals = async ({ args, signal }) => {
  if (args[0]) return proposalPage(args[0], signal);
  const box = h('div', { id: 'proposal-lists' });
  const live = liveBadge();
  const load = async () => {
    const [pending, all] = await Promise.all([
      api(`${ws()}/proposals?status=pending&limit=200`, { signal }),
      api(`${ws()}/proposals?limit=100`, { signal }),
    ]);
    const decided = all.proposals.filter((p) => p.status !== 'pending');
    const head = ['Title', 'Status', 'Author', 'Proposed', 'Decided by', 'Commit'];
    fill(box,
      h('h2', {}, `Pending (${pending.proposals.length})`),
      table(head, pending.proposals.map(proposalRow), 'No proposal is waiting for a decision.'),
      h('h2', {}, 'Decided'),
      table(head, decided.map(proposalRow), 'No decision yet.'));
  };
  await load();
  const reload = debounce(() => load().catch((e) => toast(e.message, true)), 250);
  follow({ signal, onState: live.set, onEvent: (e) => { if (/^(proposal|git)\./.test(e.type)) reload(); } });
  return [h('h1', {}, 'Proposals ', live), box];
};

function diffView(text) {
  return h('pre', { class: 'diff' }, text.split('\n').map((line) => {
    const cls = line.startsWith('+++') || line.startsWith('---') ? 'hunk'
      : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : line.startsWith('@@') ? 'hunk' : null;
    return cls ? h('span', { class: cls }, line) : `${line}\n`;
  }));
}

async function proposalPage(id, signal) {
  const box = h('div', { id: 'proposal' });
  const live = liveBadge();
  const load = async () => {
    const [p, diff] = await Promise.all([
      api(`${ws()}/proposals/${encodeURIComponent(id)}`, { signal }),
      api(`${ws()}/proposals/${encodeURIComponent(id)}/diff`, { signal }),
    ]);
    const data = p.proposal || {};
    const commit = p.history.find((e) => e.type === 'git.commit.v1');
    const pr = p.history.find((e) => e.data?.pull_request_url || e.data?.url);
    const decision = h('section', { class: 'card', id: 'decision' });
    if (p.status === 'pending' && can('approve')) {
      const comment = h('textarea', { id: 'decision-reason', name: 'reason', placeholder: 'Comment (optional for an approval, required for a rejection)' });
      const act = async (kind) => {
        const reason = comment.value.trim();
        if (kind === 'reject' && !reason) { toast('A rejection needs a reason.', true); comment.focus(); return; }
        const body = kind === 'approve' ? { content_hash: p.content_hash, ...(reason ? { comment: reason } : {}) } : { reason };
        try {
          await api(`${ws()}/proposals/${encodeURIComponent(id)}/${kind}`, { method: 'POST', body });
          toast(kind === 'approve' ? 'Approved.' : 'Rejected.');
          await load();
        } catch (e) {
          toast(`Not ${kind === 'approve' ? 'approved' : 'rejected'}: ${e.message}`, true);
        }
      };
      decision.append(h('h2', {}, 'Decide'), h('label', { for: 'decision-reason' }, 'Reason'), comment,
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'ok', 'data-action': 'approve', onclick: () => act('approve') }, 'Approve'),
          h('button', { type: 'button', class: 'danger', 'data-action': 'reject', onclick: () => act('reject') }, 'Reject')));
    } else if (p.status === 'pending') {
      decision.append(h('p', { class: 'muted', id: 'no-decision' }, `Your token (${app.session.scope}) cannot approve or reject: that needs the approve scope.`));
    } else {
      decision.append(h('p', {}, 'Decided: ', badge(p.status)));
    }
    fill(box,
      h('h1', {}, data.title || id),
      h('p', {}, badge(p.status), ' ', h('span', { class: 'muted' }, `by ${data.author || '?'}, `), when(p.created_at)),
      decision,
      h('div', { class: 'split' },
        h('section', {},
          h('h2', {}, 'Changes'),
          diff.base ? h('p', { class: 'muted' }, 'Compared with ', h('code', {}, diff.base), '.') : h('p', { class: 'muted' }, 'The repository cannot be read from here: the new contents are shown whole.'),
          diff.files.map((f) => h('div', { class: 'card' },
            h('h3', {}, h('code', {}, f.path), ' ', badge(f.action), ' ', h('span', { class: 'muted' }, `+${f.added} −${f.removed}`)),
            f.diff ? diffView(f.diff) : h('p', { class: 'muted' }, 'No change.')))),
        h('section', {},
          h('h2', {}, 'About'),
          facts([
            ['description', data.description],
            ['rationale', data.rationale],
            ['confidence', data.confidence !== undefined ? pct(data.confidence) : null],
            ['finding', data.finding ? `${data.finding.kind} (${data.finding.fingerprint})` : null],
            ['content hash', h('code', {}, p.content_hash)],
            ['correlation', h('a', { href: `#/timeline?correlation=${encodeURIComponent(p.correlation_id)}` }, p.correlation_id)],
            ['commit', commit ? h('code', { id: 'commit-sha' }, commit.data.sha) : '—'],
            pr ? ['pull request', h('a', { href: pr.data.pull_request_url || pr.data.url, rel: 'noopener noreferrer' }, pr.data.pull_request_url || pr.data.url)] : null,
          ]),
          h('h2', {}, 'History'),
          table(['#', 'Event', 'Time', 'Source'], p.history.map((e) => h('tr', { 'data-type': e.type },
            h('td', { class: 'num' }, h('a', { href: `#/event/${e.sequence}` }, e.sequence)),
            h('td', {}, h('span', { class: typeClass(e.type) }, e.type),
              e.data?.reason ? h('div', { class: 'muted' }, `“${e.data.reason}”`) : null,
              e.data?.comment ? h('div', { class: 'muted' }, `“${e.data.comment}”`) : null),
            h('td', {}, when(e.time)),
            h('td', { class: 'mono' }, e.data?.approved_by || e.data?.rejected_by || e.source)))))));
  };
  await load();
  const reload = debounce(() => load().catch((e) => toast(e.message, true)), 250);
  follow({ signal, onState: live.set, onEvent: (e) => { if (e.subject === `proposal/${id}`) reload(); } });
  return [h('p', {}, h('a', { href: '#/proposals' }, '← Proposals'), ' ', live), box];
}

// --- Agents ----------------------------------------------------------------------------------

async function consumersByAgent(signal) {
  if (!can('ops')) return null;
  try {
    const status = await api('/v1/ops/status', { signal });
    const by = new Map();
    for (const c of status.consumers || []) {
      if (!by.has(c.agent)) by.set(c.agent, []);
      by.get(c.agent).push(c);
    }
    return by;
  } catch { return null; }
}

pages.agents = async ({ args, signal }) => {
  if (args[0]) return agentPage(args[0], signal);
  const [roster, consumers] = await Promise.all([api(`${ws()}/agents`, { signal }), consumersByAgent(signal)]);
  const pending = (name) => (consumers?.get(name) || []).reduce((n, c) => n + (c.pending || 0) + (c.ack_pending || 0), 0);
  return [
    h('h1', {}, 'Agents'),
    table(['Agent', 'Version', 'Capabilities', '#Emitted', '#Failed', 'Last handled', ...(consumers ? ['#Pending'] : []), 'Approval rate', '#Memory', '#Open items', '#Dead letters'],
      roster.agents.map((a) => h('tr', { class: 'clickable', 'data-agent': a.name, onclick: () => go(`#/agents/${encodeURIComponent(a.name)}`) },
        h('td', {}, h('a', { href: `#/agents/${encodeURIComponent(a.name)}` }, a.name)),
        h('td', { class: 'mono' }, a.version),
        h('td', {}, (a.capabilities || []).join(', ')),
        h('td', { class: 'num' }, a.emitted),
        h('td', { class: 'num' }, a.failed),
        h('td', {}, ago(a.last_handled)),
        consumers ? h('td', { class: 'num' }, pending(a.name)) : null,
        h('td', { class: 'num' }, pct(a.approval_rate)),
        h('td', { class: 'num' }, a.memory_keys),
        h('td', { class: 'num' }, a.open_action_items),
        h('td', { class: 'num' }, a.dead_letters ? h('span', { class: 'error' }, a.dead_letters) : 0))),
      'No agent has registered yet.'),
  ];
};

async function agentPage(name, signal) {
  const [a, consumers] = await Promise.all([api(`${ws()}/agents/${encodeURIComponent(name)}`, { signal }), consumersByAgent(signal)]);
  const mine = consumers?.get(name) || [];
  return [
    h('p', {}, h('a', { href: '#/agents' }, '← Agents')),
    h('h1', {}, `Agent ${a.name}`),
    h('div', { class: 'grid' },
      h('section', { class: 'card' }, h('h2', {}, 'Manifest'), facts([
        ['version', a.version], ['registered', when(a.registered_at)],
        ['capabilities', (a.capabilities || []).join(', ')],
        ['subscribes', (a.subscribes || []).map((t) => h('div', { class: 'mono' }, t))],
        ['emits', (a.emits || []).map((t) => h('div', { class: 'mono' }, t))],
      ])),
      h('section', { class: 'card' }, h('h2', {}, 'Health and record'), facts([
        ['last handled', a.last_handled ? [when(a.last_handled), ` (${ago(a.last_handled)})`] : '—'],
        ['last active here', when(a.last_active)],
        ['emitted / failed', `${a.emitted} / ${a.failed}`],
        ['proposals', `${a.proposals_made} made, ${a.proposals_approved} approved, ${a.proposals_rejected} rejected`],
        ['approval rate', pct(a.approval_rate)],
        ['last rejection', a.last_rejection_reason],
        ['events of its source', h('a', { href: `#/timeline?source=${encodeURIComponent(`/agents/${a.name}`)}` }, 'timeline')],
      ]))),
    consumers ? [h('h2', {}, 'Consumers'), table(['Consumer', 'Event type', '#Pending', '#Ack pending', '#Redelivered', 'Last handled'],
      mine.map((c) => h('tr', {}, h('td', { class: 'mono' }, c.consumer), h('td', { class: 'mono' }, c.event_type),
        h('td', { class: 'num' }, c.pending), h('td', { class: 'num' }, c.ack_pending), h('td', { class: 'num' }, c.redelivered), h('td', {}, ago(c.last_handled)))),
      'No consumer on this instance.')] : null,
    h('h2', {}, `Memory (${a.memory_keys})`),
    table(['Key', 'Value', 'Recorded'], a.memory.map((m) => h('tr', {}, h('td', { class: 'mono' }, m.key),
      h('td', {}, h('pre', {}, JSON.stringify(m.value, null, 1))), h('td', {}, when(m.recorded_at)))), 'Nothing remembered in this workspace.'),
    h('h2', {}, 'Action items'),
    actionItems(a.action_items),
    h('h2', {}, 'Dead letters'),
    deadLetters(a.dead_letter_list.map((d) => ({ ...d, agent: a.name, event_position: d.sequence })), signal),
  ];
}

function actionItems(items) {
  return table(['Item', 'Status', 'Assigned', 'Completed', 'Outcome'], items.map((i) => h('tr', { 'data-status': i.status },
    h('td', {}, i.text), h('td', {}, badge(i.status)), h('td', {}, when(i.assigned_at)), h('td', {}, when(i.completed_at)), h('td', {}, i.outcome || '—'))),
  'No action item.');
}

function deadLetters(list, signal) {
  return table(['Agent', 'Event', 'Type', '#Deliveries', 'Error', 'Failed', ''], list.map((d) => h('tr', { 'data-dead-letter': d.id },
    h('td', {}, d.agent, d.workspace && d.workspace !== app.workspace ? h('div', { class: 'muted' }, `in ${d.workspace}`) : null),
    h('td', { class: 'num' }, d.event_position === undefined ? '—'
      : (!d.workspace || d.workspace === app.workspace) ? h('a', { href: `#/event/${d.event_position}` }, d.event_position) : d.event_position),
    h('td', { class: 'mono' }, d.event_type),
    h('td', { class: 'num' }, d.deliveries),
    h('td', {}, h('code', {}, d.error)),
    h('td', {}, when(d.failed_at)),
    h('td', {}, can('ops') ? h('button', {
      type: 'button', 'data-action': 'retry',
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { await api(`/v1/ops/dead-letters/${encodeURIComponent(d.id)}/retry`, { method: 'POST', body: {}, signal }); toast('Handled: the dead letter is resolved.'); route(); } catch (e) { toast(`Retry failed: ${e.message}`, true); ev.target.disabled = false; }
      },
    }, 'Retry') : null))),
  'No dead letter.');
}

// --- Artifacts -------------------------------------------------------------------------------

pages.artifacts = async ({ args, signal }) => {
  if (args[0]) return artifactPage(args[0], signal);
  const list = await api(`${ws()}/artifacts`, { signal });
  return [
    h('h1', {}, 'Artifacts'),
    table(['Artifact', 'Producer', '#Version', 'Age', 'Readers (version read)', 'Fresh'],
      list.artifacts.map((a) => h('tr', { class: 'clickable', 'data-artifact': a.name, onclick: () => go(`#/artifacts/${encodeURIComponent(a.name)}`) },
        h('td', {}, h('a', { href: `#/artifacts/${encodeURIComponent(a.name)}` }, a.name), h('div', { class: 'muted mono' }, a.path || '')),
        h('td', {}, a.latest?.producer || a.producer || '—'),
        h('td', { class: 'num' }, a.latest?.version ?? '—'),
        h('td', {}, a.age_secs === null || a.age_secs === undefined ? '—' : ago(Date.now() - a.age_secs * 1000)),
        h('td', {}, (a.readers || []).map((r) => h('div', {}, `${r.consumer} v${r.version}`, r.behind ? h('span', { class: 'error' }, ' (behind)') : null))),
        h('td', {}, a.stale ? [badge('stale'), h('div', { class: 'muted' }, (a.stale_reasons || []).join('; '))] : badge('ok')))),
      'No artifact yet.'),
  ];
};

async function artifactPage(name, signal) {
  const d = await api(`${ws()}/artifacts/${encodeURIComponent(name)}`, { signal });
  const a = d.artifact;
  const content = h('section', { class: 'card', id: 'artifact-content' });
  const show = async (version) => {
    fill(content, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const res = await fetch(`${ws()}/artifacts/${encodeURIComponent(name)}/content?version=${version}`, { headers: { Authorization: `Bearer ${app.token}` }, signal });
      const text = await res.text();
      fill(content, h('h2', {}, `Version ${version}`), h('pre', {}, text));
    } catch (e) { fill(content, h('p', { class: 'error' }, e.message)); }
  };
  if (a.latest) show(a.latest.version);
  return [
    h('p', {}, h('a', { href: '#/artifacts' }, '← Artifacts')),
    h('h1', {}, name),
    facts([['path', a.path], ['producer', a.producer], ['max age', a.max_age], ['fresh', a.stale ? `stale: ${(a.stale_reasons || []).join('; ')}` : 'yes']]),
    h('div', { class: 'split' },
      h('div', {},
        h('h2', {}, 'Versions'),
        table(['#Version', 'Producer', 'Produced', '#Bytes', ''], d.versions.map((v) => h('tr', {},
          h('td', { class: 'num' }, v.version), h('td', {}, v.producer), h('td', {}, when(v.produced_at)), h('td', { class: 'num' }, v.size_bytes),
          h('td', {}, h('button', { type: 'button', class: 'quiet', onclick: () => show(v.version) }, 'Show'))))),
        h('h2', {}, 'Reads'),
        table(['Consumer', '#Version read', 'Read'], d.reads.map((r) => h('tr', {}, h('td', {}, r.consumer), h('td', { class: 'num' }, r.version), h('td', {}, when(r.read_at)))), 'Nobody read it yet.')),
      content),
  ];
}

// --- Retrospectives ----------------------------------------------------------------------------

/** A small line chart of points [{x: Date, y: number}]. */
function chart(label, points) {
  const W = 320, H = 140, P = 28;
  const xs = points.map((p) => p.x.getTime());
  const ys = points.map((p) => p.y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys, 1e-9)];
  const sx = (x) => P + (x1 === x0 ? (W - 2 * P) / 2 : ((x - x0) / (x1 - x0)) * (W - 2 * P));
  const sy = (y) => H - P - ((y - y0) / (y1 - y0 || 1)) * (H - 2 * P);
  const line = points.map((p) => `${sx(p.x.getTime()).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' ');
  return h('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${label}: ${ys.join(', ')}` },
    h('title', {}, label),
    h('line', { class: 'axis', x1: P, y1: H - P, x2: W - P, y2: H - P }),
    h('line', { class: 'axis', x1: P, y1: P, x2: P, y2: H - P }),
    h('text', { x: 2, y: P + 4 }, String(+y1.toFixed(3))),
    h('text', { x: 2, y: H - P }, String(+y0.toFixed(3))),
    h('text', { x: P, y: H - 8 }, points[0] ? points[0].x.toLocaleDateString() : ''),
    h('polyline', { class: 'line', points: line }),
    points.map((p) => h('circle', { class: 'dot', cx: sx(p.x.getTime()), cy: sy(p.y), r: 3 }, h('title', {}, `${p.y} at ${p.x.toLocaleString()}`))));
}

pages.retrospectives = async ({ signal }) => {
  const [retros, metrics] = await Promise.all([api(`${ws()}/retrospectives?limit=50`, { signal }), api(`${ws()}/metrics`, { signal })]);
  const series = new Map(); // agent -> metric -> points
  for (const m of metrics.metrics) {
    for (const [name, value] of Object.entries(m.metrics || {})) {
      if (typeof value !== 'number') continue;
      const key = m.agent;
      if (!series.has(key)) series.set(key, new Map());
      if (!series.get(key).has(name)) series.get(key).set(name, []);
      series.get(key).get(name).push({ x: new Date(m.window_to), y: value });
    }
  }
  const startButton = can('propose') ? h('button', {
    type: 'button', 'data-action': 'start-retrospective',
    onclick: async () => {
      try { await api(`${ws()}/retrospectives`, { method: 'POST', body: {} }); toast('Retrospective requested; it appears here when done.'); setTimeout(route, 1500); } catch (e) { toast(e.message, true); }
    },
  }, 'Start a retrospective') : null;
  return [
    h('h1', {}, 'Retrospectives'),
    h('div', { class: 'actions' }, startButton),
    h('h2', {}, 'Metric trends'),
    series.size ? [...series].map(([agent, byName]) => h('section', { class: 'card', 'data-agent': agent },
      h('h3', {}, agent),
      h('div', { class: 'grid' }, [...byName].map(([name, points]) => h('figure', { style: null },
        chart(`${agent} ${name}`, points.sort((a, b) => a.x - b.x)), h('figcaption', { class: 'muted mono' }, name)))))) : h('p', { class: 'muted' }, 'No metrics yet: they come with the first retrospective.'),
    h('h2', {}, 'Retrospectives'),
    retros.retrospectives.length ? retros.retrospectives.map((r) => h('section', { class: 'card', 'data-retrospective': r.retrospective_id },
      h('h3', {}, when(r.completed_at), ' ', h('span', { class: 'muted' }, `(${r.reason || 'scheduled'})`)),
      h('h4', {}, 'Insights'),
      r.insights.length ? h('ul', {}, r.insights.map((i) => h('li', {}, i.text,
        (i.evidence || []).length ? h('div', { class: 'muted' }, 'evidence: ', i.evidence.map((id) => h('code', { title: 'event id' }, `${id} `))) : null))) : h('p', { class: 'muted' }, 'None.'),
      h('h4', {}, 'Action items'),
      actionItems((r.action_items || []).map((a) => ({ ...a, assigned_at: a.assigned_at || r.completed_at }))))) : h('p', { class: 'muted' }, 'No retrospective yet.'),
  ];
};

// --- Workflows -------------------------------------------------------------------------------

pages.workflows = async ({ args, signal }) => {
  if (args[0]) return planPage(args[0], signal);
  const list = await api(`${ws()}/plans?limit=100`, { signal });
  return [
    h('h1', {}, 'Workflows'),
    table(['Plan', 'Status', '#Done', '#Tasks', '#Escalated', 'Submitted', 'By'], list.plans.map((p) => h('tr', { class: 'clickable', 'data-plan': p.id, onclick: () => go(`#/workflows/${encodeURIComponent(p.id)}`) },
      h('td', {}, h('a', { href: `#/workflows/${encodeURIComponent(p.id)}` }, p.title || p.id), h('div', { class: 'muted mono' }, p.id)),
      h('td', {}, badge(p.status)), h('td', { class: 'num' }, p.done), h('td', { class: 'num' }, p.tasks),
      h('td', { class: 'num' }, p.escalated ? h('span', { class: 'error' }, p.escalated) : 0),
      h('td', {}, when(p.submitted_at)), h('td', {}, p.submitted_by))), 'No plan yet: submit one with POST …/plans or switchyard plan submit.'),
  ];
};

/** Tasks laid out in columns by dependency depth; branch tasks next to their parent. */
function planGraph(tasks) {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const level = new Map();
  const depthOf = (t, trail = new Set()) => {
    if (level.has(t.id)) return level.get(t.id);
    if (trail.has(t.id)) return 0;
    trail.add(t.id);
    const deps = (t.depends_on || []).map((d) => byId.get(d)).filter(Boolean);
    const parent = t.parent_id ? byId.get(t.parent_id) : null;
    let l = deps.length ? 1 + Math.max(...deps.map((d) => depthOf(d, trail))) : 0;
    if (parent) l = Math.max(l, depthOf(parent, trail) + 1);
    level.set(t.id, l);
    return l;
  };
  tasks.forEach((t) => depthOf(t));
  const columns = [];
  for (const t of tasks) (columns[level.get(t.id)] ||= []).push(t);
  const NW = 190, NH = 58, GX = 60, GY = 18;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((t, r) => pos.set(t.id, { x: 10 + c * (NW + GX), y: 10 + r * (NH + GY) })));
  const width = 20 + columns.length * (NW + GX) - GX;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (NH + GY) - GY;
  const edge = (from, to, cls) => {
    const a = pos.get(from), b = pos.get(to);
    if (!a || !b) return null;
    const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x, y2 = b.y + NH / 2, mx = (x1 + x2) / 2;
    return h('path', { class: cls, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, 'marker-end': `url(#arrow-${cls})` });
  };
  // An arrowhead where an edge meets the task that waits for (or branched from) the other.
  const head = (cls) => h('marker', { id: `arrow-${cls}`, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto' },
    h('path', { class: `head head-${cls}`, d: 'M0,0 L10,5 L0,10 z' }));
  return h('div', { class: 'table-wrap' }, h('svg', { class: 'graph', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'Task graph' },
    h('defs', {}, head('dep'), head('branch')),
    tasks.flatMap((t) => (t.depends_on || []).map((d) => edge(d, t.id, 'dep'))),
    tasks.filter((t) => t.parent_id).map((t) => edge(t.parent_id, t.id, 'branch')),
    tasks.map((t) => {
      const p = pos.get(t.id);
      const sub = t.review?.label || (t.parent_id ? `branch of ${t.parent_id}` : `${t.role} · attempt ${t.attempts}/${t.max_attempts}`);
      return h('g', { class: `s-${t.status}`, 'data-task': t.id, transform: `translate(${p.x},${p.y})` },
        h('title', {}, `${t.id}: ${t.status}${t.escalation ? ` — ${t.escalation}` : ''}`),
        h('rect', { width: NW, height: NH, rx: 8 }),
        h('text', { x: 10, y: 20 }, (t.title || t.id).slice(0, 26)),
        h('text', { x: 10, y: 36, class: 'sub' }, `${t.status}`),
        h('text', { x: 10, y: 50, class: 'sub' }, sub.slice(0, 30)));
    })));
}

async function planPage(id, signal) {
  const box = h('div', { id: 'plan' });
  const live = liveBadge();
  const load = async () => {
    const p = await api(`${ws()}/plans/${encodeURIComponent(id)}`, { signal });
    const escalated = p.tasks.filter((t) => t.escalation || t.status === 'escalated');
    const resolve = (t) => {
      if (!can('approve')) return h('p', { class: 'muted' }, 'Resolving needs the approve scope.');
      const comment = h('input', { name: 'comment', placeholder: 'comment (optional)', 'aria-label': `Comment on ${t.id}` });
      const act = async (action) => {
        try {
          await api(`${ws()}/plans/${encodeURIComponent(id)}/tasks/${encodeURIComponent(t.id)}/resolve`, { method: 'POST', body: { action, ...(comment.value.trim() ? { comment: comment.value.trim() } : {}) } });
          toast(`Resolved: ${action}.`);
          await load();
        } catch (e) { toast(e.message, true); }
      };
      return h('div', { class: 'actions' }, comment,
        h('button', { type: 'button', 'data-action': 'retry', onclick: () => act('retry') }, 'Retry'),
        h('button', { type: 'button', class: 'quiet', 'data-action': 'skip', onclick: () => act('skip') }, 'Skip'),
        h('button', { type: 'button', class: 'danger', 'data-action': 'abort', onclick: () => act('abort') }, 'Abort the plan'));
    };
    const cancel = p.status === 'running' && can('propose') ? h('button', {
      type: 'button', class: 'danger', 'data-action': 'cancel',
      onclick: async () => {
        try { await api(`${ws()}/plans/${encodeURIComponent(id)}/cancel`, { method: 'POST', body: { reason: 'cancelled from the dashboard' } }); toast('Cancelling.'); await load(); } catch (e) { toast(e.message, true); }
      },
    }, 'Cancel the plan') : null;
    fill(box,
      h('h1', {}, p.title || p.id),
      h('p', {}, badge(p.status), ' ', h('span', { class: 'muted' }, `submitted by ${p.submitted_by} `), when(p.submitted_at), ' ', cancel),
      escalated.length ? h('section', { class: 'card', id: 'escalations' }, h('h2', {}, 'Escalations'),
        escalated.map((t) => h('div', { 'data-escalated': t.id }, h('h3', {}, t.title || t.id), h('p', {}, t.escalation || ''), resolve(t)))) : null,
      h('h2', {}, 'Graph'),
      planGraph(p.tasks),
      h('h2', {}, 'Tasks'),
      table(['Task', 'Status', 'Role', 'Attempts', 'Review', 'Branches', 'Commit', 'Updated'], p.tasks.map((t) => h('tr', { 'data-task': t.id },
        h('td', {}, t.title || t.id, h('div', { class: 'muted mono' }, t.id, t.parent_id ? ` ← ${t.parent_id}` : '')),
        h('td', {}, badge(t.status), t.last_failure ? h('div', { class: 'muted' }, `${t.last_failure.phase || 'failed'}${t.last_failure.exit_code !== undefined ? ` (exit ${t.last_failure.exit_code})` : ''}`) : null),
        h('td', {}, t.role),
        h('td', { class: 'num' }, `${t.attempts}/${t.max_attempts}`),
        h('td', {}, t.review ? t.review.label : '—', t.review?.last_feedback ? h('div', { class: 'muted' }, `“${t.review.last_feedback.message}”`) : null),
        h('td', {}, (t.branches || []).join(', ') || '—'),
        h('td', { class: 'mono' }, t.commit ? t.commit.slice(0, 10) : '—'),
        h('td', {}, when(t.updated_at))))),
      h('p', {}, h('a', { href: `#/timeline?correlation=${encodeURIComponent(p.correlation_id)}` }, 'The plan’s events in the timeline')));
  };
  await load();
  const reload = debounce(() => load().catch((e) => toast(e.message, true)), 300);
  follow({ signal, onState: live.set, onEvent: (e) => { if (/^(task|plan)\./.test(e.type)) reload(); } });
  return [h('p', {}, h('a', { href: '#/workflows' }, '← Workflows'), ' ', live), box];
}

// --- Ops -------------------------------------------------------------------------------------

pages.ops = async ({ signal }) => {
  if (!can('ops')) return [h('h1', {}, 'Ops'), h('p', {}, 'The ops pages need an admin token for every workspace.')];
  const [status, dead] = await Promise.all([api('/v1/ops/status', { signal }), api('/v1/ops/dead-letters', { signal })]);
  const relay = status.relay || {};
  const r = relay.status || {};
  const pause = h('button', {
    type: 'button', class: r.paused_by ? 'ok' : 'danger', 'data-action': r.paused_by ? 'resume-relay' : 'pause-relay',
    onclick: async () => {
      try { await api(`/v1/ops/relay/${r.paused_by ? 'resume' : 'pause'}`, { method: 'POST', body: {} }); route(); } catch (e) { toast(e.message, true); }
    },
  }, r.paused_by ? 'Resume the relay' : 'Pause the relay');
  const timer = setInterval(() => { if (!signal.aborted && document.visibilityState === 'visible') route(); }, 10000);
  signal.addEventListener('abort', () => clearInterval(timer));
  return [
    h('h1', {}, 'Ops'),
    h('p', { class: 'muted' }, 'Refreshed every 10 s.'),
    h('div', { class: 'grid' },
      h('section', { class: 'card', id: 'relay' }, h('h2', {}, 'Relay'), facts([
        ['active here', relay.active_here ? 'yes' : 'no (another instance holds it)'],
        ['lag', `${r.lag_events ?? '—'} events, ${r.lag_seconds ?? '—'} s`],
        ['relayed', r.relayed], ['stream', r.stream], ['stream sequence', r.stream_sequence],
        ['paused by', r.paused_by || '—'],
      ]), h('div', { class: 'actions' }, pause)),
      h('section', { class: 'card' }, h('h2', {}, 'Store'), facts([
        ['events', status.store?.events], ['head sequence', status.store?.head_sequence], ['lag counted up to', status.lag_cap],
      ]))),
    h('h2', {}, 'Projections'),
    table(['Projection', '#Lag (events)', '#Applied', 'Cursor'], (status.projections || []).map((p) => h('tr', { 'data-projection': p.name },
      h('td', {}, p.name), h('td', { class: 'num' }, p.lag_events), h('td', { class: 'num' }, p.applied), h('td', { class: 'mono' }, p.cursor)))),
    h('h2', {}, `Dead letters (${(dead.dead_letters || []).length})`),
    deadLetters(dead.dead_letters || [], signal),
    h('h2', {}, 'Consumers'),
    table(['Agent', 'Event type', '#Pending', '#Ack pending', '#Redelivered', 'Last handled'], (status.consumers || []).map((c) => h('tr', {},
      h('td', {}, c.agent), h('td', { class: 'mono' }, c.event_type), h('td', { class: 'num' }, c.pending), h('td', { class: 'num' }, c.ack_pending),
      h('td', { class: 'num' }, c.redelivered), h('td', {}, ago(c.last_handled))))),
  ];
};

// --- Start -----------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  if (app.token) start();
  else renderLogin();
});
