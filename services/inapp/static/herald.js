// Herald in-app widgets: <herald-bell> (badge + dropdown) and <herald-inbox> (the full list).
// Plain custom elements, no build step, no framework. Load as a module:
//   <script type="module" src="https://herald.example/widget/herald.js"></script>
//   <herald-bell inbox-url="/notifications"></herald-bell>
//   document.querySelector('herald-bell').tokenProvider = async () => myJwt;
// Attributes: api-base (default: where this script came from), token (a JWT; prefer tokenProvider),
// limit (bell: 10), inbox-url (bell: the full inbox page).
// Events: `herald-open` (cancelable, detail = the notification) before following its URL.

const CATEGORIES = {
  lesson_updates: 'Lessons',
  messages: 'Messages',
  reviews: 'Reviews',
  learning_tips: 'Learning tips',
  system_updates: 'System updates',
  promotional: 'Offers',
  security: 'Security',
};
const SCRIPT_ORIGIN = new URL(import.meta.url).origin;

export class HeraldApi {
  constructor(base, tokenSource) {
    this.base = (base || SCRIPT_ORIGIN).replace(/\/$/, '');
    this.tokenSource = tokenSource;
  }

  async request(method, path, params) {
    const url = new URL(this.base + path, location.href);
    for (const [key, value] of Object.entries(params || {})) {
      if (value === undefined || value === null || value === false || value === '') continue;
      for (const v of [].concat(value)) url.searchParams.append(key, v);
    }
    const token = await this.tokenSource();
    const response = await fetch(url, { method, headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) throw new Error(`${method} ${url.pathname} answered ${response.status}`);
    return response.status === 204 ? null : response.json();
  }

  list(params) { return this.request('GET', '/v1/inbox', params); }
  unreadCount() { return this.request('GET', '/v1/inbox/unread-count'); }
  read(id) { return this.request('POST', `/v1/inbox/${encodeURIComponent(id)}/read`); }
  unread(id) { return this.request('POST', `/v1/inbox/${encodeURIComponent(id)}/unread`); }
  remove(id) { return this.request('DELETE', `/v1/inbox/${encodeURIComponent(id)}`); }
  readAll() { return this.request('POST', '/v1/inbox/read-all'); }
  clear() { return this.request('DELETE', '/v1/inbox'); }
  streamToken() { return this.request('POST', '/v1/inbox/stream-token'); }
}

// An EventSource opened with a short-lived stream token. The browser reconnects by itself
// (sending Last-Event-ID); when the server refuses an expired token the source closes, and
// this opens a new one with a fresh token, resuming after the last event seen.
export class HeraldStream {
  constructor(api, handlers) {
    this.api = api;
    this.handlers = handlers;
    this.lastEventId = null;
    this.failures = 0;
    this.closed = false;
  }

  async open() {
    if (this.closed) return;
    let token;
    try {
      ({ token } = await this.api.streamToken());
    } catch (error) {
      this.retryLater();
      return;
    }
    if (this.closed) return;
    const url = new URL(this.api.base + '/v1/inbox/stream', location.href);
    url.searchParams.set('token', token);
    if (this.lastEventId) url.searchParams.set('last_event_id', this.lastEventId);
    const source = (this.source = new EventSource(url));
    const json = (handler, track) => (event) => {
      if (track && event.lastEventId) this.lastEventId = event.lastEventId;
      this.handlers[handler]?.(JSON.parse(event.data));
    };
    source.addEventListener('ready', (event) => { this.failures = 0; json('ready', true)(event); });
    source.addEventListener('notification', json('notification', true));
    source.addEventListener('unread', (event) => this.handlers.unread?.(JSON.parse(event.data).count));
    source.addEventListener('change', json('change', false));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) this.retryLater();
    };
  }

  retryLater() {
    if (this.closed) return;
    this.source?.close();
    const delay = Math.min(30000, 1000 * 2 ** this.failures++);
    this.timer = setTimeout(() => this.open(), delay);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.source?.close();
  }
}

// Only web links are followed or rendered as links (never javascript: or data: URLs).
function safeUrl(url) {
  if (!url) return null;
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === 'https:' || parsed.protocol === 'http:' ? parsed.href : null;
  } catch (error) {
    return null;
  }
}

function relativeTime(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const format = new Intl.RelativeTimeFormat(document.documentElement.lang || undefined, { numeric: 'auto' });
  for (const [unit, size] of [['day', 86400], ['hour', 3600], ['minute', 60]]) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(Math.round(seconds), 'second');
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class HeraldElement extends HTMLElement {
  constructor() {
    super();
    this.attachShadow({ mode: 'open' });
    this.started = false;
  }

  set tokenProvider(provider) {
    this._tokenProvider = provider;
    this.start();
  }

  get tokenProvider() { return this._tokenProvider; }

  token() {
    return this._tokenProvider ? this._tokenProvider() : this.getAttribute('token');
  }

  connectedCallback() {
    if (this._tokenProvider || this.hasAttribute('token')) this.start();
  }

  disconnectedCallback() {
    this.stream?.close();
    this.started = false;
  }

  start() {
    if (this.started || !this.isConnected) return;
    this.started = true;
    this.api = new HeraldApi(this.getAttribute('api-base'), () => this.token());
    this.refresh().catch((error) => this.problem(error));
    this.stream = new HeraldStream(this.api, {
      // A (re)connect: show what is current, as deep as the user has loaded (the inbox keeps its pages).
      ready: (state) => { this.setUnread(state.unread); this.refresh({ keep: true }).catch((error) => this.problem(error)); },
      notification: (item) => this.added(item),
      unread: (count) => this.setUnread(count),
      change: (change) => this.changed(change),
    });
    this.stream.open();
  }

  problem(error) {
    console.warn('herald:', error);
  }

  setUnread() {}

  open(item) {
    const proceed = this.dispatchEvent(new CustomEvent('herald-open', { detail: item, bubbles: true, composed: true, cancelable: true }));
    const url = safeUrl(item.url);
    if (proceed && url) location.assign(url);
  }

  applyChange(items, { op, ids }) {
    if (op === 'resync') {
      this.refresh({ keep: true }).catch((error) => this.problem(error));
      return items;
    }
    const touched = new Set(ids);
    if (op === 'cleared') return [];
    if (op === 'deleted') return items.filter((item) => !touched.has(item.id));
    for (const item of items) {
      if (op === 'read_all' || (op === 'read' && touched.has(item.id))) item.read = true;
      if (op === 'unread' && touched.has(item.id)) item.read = false;
    }
    return items;
  }
}

const BELL_STYLE = `
:host { position: relative; display: inline-block; font: 14px/1.4 system-ui, sans-serif; color: #1f2933; }
.bell { position: relative; border: 0; background: transparent; padding: 6px; border-radius: 50%; cursor: pointer; color: inherit; }
.bell:focus-visible, [role=menuitem]:focus-visible { outline: 2px solid #2563eb; outline-offset: 2px; }
.bell svg { width: 24px; height: 24px; display: block; }
.badge { position: absolute; top: 0; right: 0; min-width: 18px; height: 18px; padding: 0 4px; box-sizing: border-box;
  border-radius: 9px; background: #dc2626; color: #fff; font-size: 11px; font-weight: 700; line-height: 18px; text-align: center; }
.panel { position: absolute; right: 0; top: calc(100% + 6px); width: 340px; max-height: 480px; overflow: auto; z-index: 1000;
  background: #fff; border: 1px solid #d9dee4; border-radius: 8px; box-shadow: 0 8px 24px rgba(0,0,0,.15); }
.head { padding: 10px 14px; font-weight: 600; border-bottom: 1px solid #eef1f4; }
ul { list-style: none; margin: 0; padding: 0; }
[role=menuitem] { display: block; padding: 10px 14px; cursor: pointer; border-bottom: 1px solid #f2f4f7; outline: none; color: inherit; text-decoration: none; }
[role=menuitem]:hover, [role=menuitem]:focus { background: #f1f5fd; }
.item.unread .title { font-weight: 700; }
.item.unread .title::before { content: ''; display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: #2563eb; margin-right: 6px; }
.body { display: block; color: #52606d; font-size: 13px; }
time { display: block; color: #7b8794; font-size: 12px; }
.action { color: #2563eb; font-weight: 600; }
.empty { padding: 14px; color: #7b8794; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
[hidden] { display: none !important; }
`;

const BELL_ICON = '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" aria-hidden="true" focusable="false"><path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/><path d="M13.73 21a2 2 0 0 1-3.46 0"/></svg>';

export class HeraldBell extends HeraldElement {
  constructor() {
    super();
    this.items = [];
    this.unread = 0;
    this.shadowRoot.innerHTML = `<style>${BELL_STYLE}</style>
      <button class="bell" part="button" type="button" aria-haspopup="menu" aria-expanded="false" aria-controls="menu" aria-label="Notifications">
        ${BELL_ICON}<span class="badge" part="badge" aria-hidden="true" hidden>0</span>
      </button>
      <div class="panel" part="panel" hidden>
        <div class="head" id="heading">Notifications</div>
        <ul id="menu" role="menu" aria-labelledby="heading"></ul>
      </div>
      <div class="sr" role="status" aria-live="polite"></div>`;
    this.button = this.shadowRoot.querySelector('.bell');
    this.badge = this.shadowRoot.querySelector('.badge');
    this.panel = this.shadowRoot.querySelector('.panel');
    this.menu = this.shadowRoot.querySelector('#menu');
    this.live = this.shadowRoot.querySelector('[role=status]');
    this.button.addEventListener('click', () => this.toggle());
    this.button.addEventListener('keydown', (event) => this.onButtonKey(event));
    this.menu.addEventListener('keydown', (event) => this.onMenuKey(event));
    this.menu.addEventListener('click', (event) => {
      const entry = event.target.closest('[role=menuitem]');
      if (entry) { event.preventDefault(); this.activate(entry); }
    });
    this.outside = (event) => { if (!event.composedPath().includes(this)) this.close(false); };
    this.setUnread(0);
    this.render();
  }

  get limit() { return Number(this.getAttribute('limit')) || 10; }
  get isOpen() { return !this.panel.hidden; }

  async refresh() {
    const page = await this.api.list({ limit: this.limit });
    this.items = page.items;
    this.render();
  }

  setUnread(count) {
    this.unread = count;
    this.badge.textContent = count > 99 ? '99+' : String(count);
    this.badge.hidden = count === 0;
    this.button.setAttribute('aria-label', count ? `Notifications, ${count} unread` : 'Notifications, none unread');
  }

  added(item) {
    if (this.items.some((known) => known.id === item.id)) return;
    this.items = [item, ...this.items].slice(0, this.limit);
    this.live.textContent = `New notification: ${item.title}`;
    this.render();
  }

  changed(change) {
    this.items = this.applyChange(this.items, change);
    if (change.op === 'deleted' || change.op === 'cleared') this.refresh().catch((error) => this.problem(error));
    this.render();
  }

  entries() { return [...this.menu.querySelectorAll('[role=menuitem]')]; }

  render() {
    const focused = this.shadowRoot.activeElement?.dataset?.key;
    const rows = this.items.map((item) =>
      el('li', { role: 'menuitem', tabindex: '-1', class: `item${item.read ? '' : ' unread'}`, 'data-key': item.id, 'data-id': item.id },
        el('span', { class: 'sr' }, item.read ? '' : 'Unread: '),
        el('span', { class: 'title' }, item.title),
        el('span', { class: 'body' }, item.body),
        el('time', { datetime: item.created_at }, relativeTime(item.created_at))));
    if (!rows.length) rows.push(el('li', { role: 'none', class: 'empty' }, 'You are all caught up.'));
    rows.push(el('li', { role: 'menuitem', tabindex: '-1', class: 'action', 'data-key': 'read-all', 'data-action': 'read-all' }, 'Mark all as read'));
    const inboxUrl = this.getAttribute('inbox-url');
    if (inboxUrl) rows.push(el('li', { role: 'none' }, el('a', { role: 'menuitem', tabindex: '-1', class: 'action', href: inboxUrl, 'data-key': 'inbox', 'data-action': 'inbox' }, 'See all notifications')));
    this.menu.replaceChildren(...rows);
    if (focused) (this.entries().find((entry) => entry.dataset.key === focused) || this.entries()[0])?.focus();
  }

  toggle() { this.isOpen ? this.close(true) : this.openPanel(0); }

  openPanel(focusIndex) {
    this.panel.hidden = false;
    this.button.setAttribute('aria-expanded', 'true');
    document.addEventListener('click', this.outside, true);
    const entries = this.entries();
    if (focusIndex !== null && entries.length) entries[(focusIndex + entries.length) % entries.length].focus();
  }

  close(returnFocus) {
    if (!this.isOpen) return;
    this.panel.hidden = true;
    this.button.setAttribute('aria-expanded', 'false');
    document.removeEventListener('click', this.outside, true);
    if (returnFocus) this.button.focus();
  }

  onButtonKey(event) {
    if (event.key === 'ArrowDown') { event.preventDefault(); this.openPanel(0); }
    else if (event.key === 'ArrowUp') { event.preventDefault(); this.openPanel(-1); }
    else if (event.key === 'Escape') this.close(true);
  }

  onMenuKey(event) {
    const entries = this.entries();
    const index = entries.indexOf(this.shadowRoot.activeElement);
    const move = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: entries.length - 1 }[event.key];
    if (move !== undefined) {
      event.preventDefault();
      entries[(move + entries.length) % entries.length]?.focus();
    } else if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      if (index >= 0) this.activate(entries[index]);
    } else if (event.key === 'Escape') {
      event.preventDefault();
      this.close(true);
    } else if (event.key === 'Tab') {
      this.close(false);
    }
  }

  async activate(entry) {
    const action = entry.dataset.action;
    try {
      if (action === 'read-all') {
        const result = await this.api.readAll();
        this.items.forEach((item) => { item.read = true; });
        this.setUnread(result.unread_count);
        this.render();
      } else if (action === 'inbox') {
        location.assign(entry.getAttribute('href'));
      } else {
        const item = this.items.find((known) => known.id === entry.dataset.id);
        if (!item) return;
        if (!item.read) {
          const result = await this.api.read(item.id);
          item.read = true;
          this.setUnread(result.unread_count);
          this.render();
        }
        this.open(item);
      }
    } catch (error) {
      this.problem(error);
    }
  }
}

const INBOX_STYLE = `
:host { display: block; font: 15px/1.45 system-ui, sans-serif; color: #1f2933; }
.toolbar { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 12px; }
.toolbar .spacer { flex: 1; }
button { font: inherit; padding: 4px 10px; border: 1px solid #c5ccd3; border-radius: 6px; background: #fff; cursor: pointer; }
button:focus-visible, select:focus-visible, input:focus-visible, a:focus-visible { outline: 2px solid #2563eb; outline-offset: 2px; }
ul { list-style: none; margin: 0; padding: 0; border-top: 1px solid #e4e7eb; }
li { display: grid; grid-template-columns: 1fr auto; gap: 4px 12px; padding: 12px 4px; border-bottom: 1px solid #e4e7eb; }
li.unread .title { font-weight: 700; }
li.unread .title::before { content: ''; display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: #2563eb; margin-right: 6px; }
.meta { color: #7b8794; font-size: 13px; }
.body { color: #52606d; }
.actions { grid-row: 1 / span 3; grid-column: 2; display: flex; gap: 6px; align-items: start; }
.empty { color: #7b8794; padding: 16px 4px; display: block; }
.more { margin-top: 12px; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
[hidden] { display: none !important; }
`;

export class HeraldInbox extends HeraldElement {
  constructor() {
    super();
    this.items = [];
    this.cursor = null;
    const categories = Object.entries(CATEGORIES).map(([value, label]) => `<option value="${value}">${label}</option>`).join('');
    this.shadowRoot.innerHTML = `<style>${INBOX_STYLE}</style>
      <section aria-labelledby="heading">
        <h2 id="heading" part="heading">Notifications</h2>
        <div class="toolbar" role="toolbar" aria-label="Filters and actions">
          <label>Category <select name="category"><option value="">All</option>${categories}</select></label>
          <label><input type="checkbox" name="unread"> Unread only</label>
          <span class="spacer"></span>
          <button type="button" data-action="read-all">Mark all as read</button>
          <button type="button" data-action="clear">Clear all</button>
        </div>
        <ul aria-labelledby="heading"></ul>
        <button type="button" class="more" data-action="more" hidden>Load more</button>
        <div class="sr" role="status" aria-live="polite"></div>
      </section>`;
    this.list = this.shadowRoot.querySelector('ul');
    this.more = this.shadowRoot.querySelector('.more');
    this.category = this.shadowRoot.querySelector('select');
    this.unreadOnly = this.shadowRoot.querySelector('input[name=unread]');
    this.live = this.shadowRoot.querySelector('[role=status]');
    this.category.addEventListener('change', () => this.refresh());
    this.unreadOnly.addEventListener('change', () => this.refresh());
    this.shadowRoot.addEventListener('click', (event) => this.onClick(event));
    this.list.addEventListener('keydown', (event) => this.onKey(event));
  }

  filters() {
    return { category: this.category.value || undefined, unread: this.unreadOnly.checked };
  }

  matches(item) {
    const { category, unread } = this.filters();
    return (!category || item.category === category) && (!unread || !item.read);
  }

  async refresh({ keep = false } = {}) {
    // keep: as many rows as are shown (pages loaded with "Load more" stay), not back to the first page.
    const page = await this.api.list({ ...this.filters(), limit: keep ? Math.max(20, this.items.length) : 20 });
    this.items = page.items;
    this.cursor = page.next_cursor;
    this.render();
  }

  async loadMore() {
    if (!this.cursor) return;
    const page = await this.api.list({ ...this.filters(), limit: 20, cursor: this.cursor });
    const known = new Set(this.items.map((item) => item.id));
    this.items.push(...page.items.filter((item) => !known.has(item.id)));
    this.cursor = page.next_cursor;
    this.render();
    this.live.textContent = `${page.items.length} more loaded`;
  }

  added(item) {
    if (!this.matches(item) || this.items.some((known) => known.id === item.id)) return;
    this.items.unshift(item);
    this.live.textContent = `New notification: ${item.title}`;
    this.render();
  }

  changed(change) {
    this.items = this.applyChange(this.items, change).filter((item) => this.matches(item));
    this.render();
  }

  render() {
    const focusedKey = this.shadowRoot.activeElement?.dataset?.key;
    const rows = this.items.map((item, index) => {
      const url = safeUrl(item.url);
      const title = url
        ? el('a', { href: url, class: 'title', 'data-action': 'open', 'data-id': item.id }, item.title)
        : el('span', { class: 'title' }, item.title);
      return el('li', { class: item.read ? '' : 'unread', 'data-id': item.id, 'data-key': `row-${item.id}`, tabindex: index === 0 ? '0' : '-1' },
        el('div', {}, el('span', { class: 'sr' }, item.read ? '' : 'Unread: '), title),
        el('div', { class: 'body' }, item.body),
        el('div', { class: 'meta' }, `${CATEGORIES[item.category] || item.category} · `, el('time', { datetime: item.created_at }, relativeTime(item.created_at))),
        el('div', { class: 'actions' },
          el('button', { type: 'button', 'data-action': item.read ? 'unread' : 'read', 'data-id': item.id, 'data-key': `toggle-${item.id}`, 'aria-label': `${item.read ? 'Mark unread' : 'Mark read'}: ${item.title}` }, item.read ? 'Mark unread' : 'Mark read'),
          el('button', { type: 'button', 'data-action': 'delete', 'data-id': item.id, 'data-key': `delete-${item.id}`, 'aria-label': `Delete: ${item.title}` }, 'Delete')));
    });
    if (!rows.length) rows.push(el('li', { class: 'empty' }, 'No notifications.'));
    this.list.replaceChildren(...rows);
    this.more.hidden = !this.cursor;
    if (focusedKey) this.shadowRoot.querySelector(`[data-key="${CSS.escape(focusedKey)}"]`)?.focus();
  }

  async onClick(event) {
    const target = event.target.closest('[data-action]');
    if (!target) return;
    const { action, id } = target.dataset;
    const item = this.items.find((known) => known.id === id);
    try {
      if (action === 'more') await this.loadMore();
      else if (action === 'read-all') { await this.api.readAll(); this.items.forEach((i) => { i.read = true; }); this.changed({ op: 'read_all', ids: [] }); }
      else if (action === 'clear') {
        if (!confirm('Delete every notification?')) return;
        await this.api.clear();
        this.items = [];
        this.cursor = null;
        this.render();
        this.live.textContent = 'All notifications deleted';
      } else if (action === 'read' || action === 'unread') {
        await this.api[action](id);
        this.changed({ op: action, ids: [id] });
      } else if (action === 'delete') {
        await this.api.remove(id);
        this.changed({ op: 'deleted', ids: [id] });
        this.live.textContent = `Deleted: ${item?.title ?? ''}`;
      } else if (action === 'open' && item) {
        event.preventDefault();
        if (!item.read) await this.api.read(id);
        this.open(item);
      }
    } catch (error) {
      this.problem(error);
    }
  }

  onKey(event) {
    const rows = [...this.list.querySelectorAll('li[data-id]')];
    const index = rows.indexOf(event.target.closest('li'));
    const move = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: rows.length - 1 }[event.key];
    if (move !== undefined && rows.length && event.target.tagName !== 'SELECT') {
      event.preventDefault();
      rows[Math.max(0, Math.min(rows.length - 1, move))].focus();
    } else if (event.key === 'Enter' && event.target.tagName === 'LI') {
      const item = this.items.find((known) => known.id === event.target.dataset.id);
      if (item) this.open(item);
    }
  }
}

if (!customElements.get('herald-bell')) customElements.define('herald-bell', HeraldBell);
if (!customElements.get('herald-inbox')) customElements.define('herald-inbox', HeraldInbox);
