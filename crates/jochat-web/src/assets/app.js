// JoChat's page. Plain JavaScript, no build step. Everything users wrote is put into the page
// with textContent, never as HTML.
'use strict';

const PAGE_SIZE = 20;
const ACCOUNTS_PAGE_SIZE = 20;

// ---- SHA-256 (the password is hashed here, as the client library does) ----

const SHA256_K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function rotr(x, n) {
  return (x >>> n) | (x << (32 - n));
}

// The lowercase hex SHA-256 of the UTF-8 bytes of `text`. Written out (rather than
// crypto.subtle) because browsers offer crypto.subtle only on https and localhost.
function sha256Hex(text) {
  const bytes = new TextEncoder().encode(text);
  const blocks = Math.ceil((bytes.length + 9) / 64);
  const padded = new Uint8Array(blocks * 64);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  const bits = bytes.length * 8;
  view.setUint32(padded.length - 8, Math.floor(bits / 0x100000000));
  view.setUint32(padded.length - 4, bits >>> 0);
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(block + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      const choice = (e & f) ^ (~e & g);
      const t1 = (hh + s1 + choice + SHA256_K[i] + w[i]) >>> 0;
      const s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      const majority = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (s0 + majority) >>> 0;
      hh = g; g = f; f = e; e = (d + t1) >>> 0;
      d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  return Array.from(h, (word) => word.toString(16).padStart(8, '0')).join('');
}

// An empty password goes as it is, so that the server answers with its rule.
function passwordDigest(password) {
  return password === '' ? '' : sha256Hex(password);
}

// ---- Calling the API ----

class ApiFailure extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') {
    init.headers['X-JoChat-Request'] = '1';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body || {});
  }
  let response;
  try {
    response = await fetch('/api' + path, init);
  } catch (error) {
    throw new ApiFailure(0, 'network', 'cannot reach the JoChat web server', null);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    const failure = new ApiFailure(response.status, error.code || 'http',
      error.message || response.statusText, error.field || null);
    if (failure.code === 'session_ended' && state.me) {
      showAuth('Your session ended: log in again.');
    }
    throw failure;
  }
  return data;
}

// ---- Small helpers ----

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function notice(text) {
  $('notice').textContent = text;
}

// Clears the errors of a form whose fields are `${prefix}-${field}`.
function clearErrors(prefix, fields) {
  for (const field of fields) {
    const message = $(`${prefix}-${field}-error`);
    if (message) message.textContent = '';
    const input = $(`${prefix}-${field}`);
    if (input) input.removeAttribute('aria-invalid');
  }
  const general = $(`${prefix}-error`);
  if (general) general.textContent = '';
}

// Shows a failure beside the field it concerns, or under the form.
function showError(prefix, failure, generalId) {
  const message = failure.field && $(`${prefix}-${failure.field}-error`);
  if (message) {
    message.textContent = failure.message;
    const input = $(`${prefix}-${failure.field}`);
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  } else {
    $(generalId || `${prefix}-error`).textContent = failure.message;
  }
}

function formatTime(ms) {
  const date = new Date(ms);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

// ---- State ----

const state = {
  me: null,
  mode: 'login',
  // The listing shown: the inbox, or the conversation with one user.
  withUser: null,
  offset: 0,
  total: 0,
  messages: [],
  accountsPattern: '',
  accountsOffset: 0,
  accountsTotal: 0,
  events: null,
  // The highest incoming message id seen, where the live stream starts.
  lastId: 0,
};

// ---- Sign up, log in, log out ----

function setMode(mode) {
  state.mode = mode;
  const signup = mode === 'signup';
  $('mode-login').setAttribute('aria-pressed', String(!signup));
  $('mode-signup').setAttribute('aria-pressed', String(signup));
  $('auth-title').textContent = signup ? 'Sign up' : 'Log in';
  $('auth-submit').textContent = signup ? 'Sign up' : 'Log in';
  $('confirm-row').hidden = !signup;
  $('auth-password').autocomplete = signup ? 'new-password' : 'current-password';
  clearErrors('auth', ['username', 'password', 'confirm']);
}

function showAuth(message) {
  stopEvents();
  state.me = null;
  $('who').hidden = true;
  $('chat-view').hidden = true;
  $('auth-view').hidden = false;
  $('auth-password').value = '';
  $('auth-confirm').value = '';
  notice(message || '');
  $('auth-username').focus();
}

async function submitAuth(event) {
  event.preventDefault();
  clearErrors('auth', ['username', 'password', 'confirm']);
  const username = $('auth-username').value.trim();
  const password = $('auth-password').value;
  if (state.mode === 'signup' && password !== $('auth-confirm').value) {
    showError('auth', { field: 'confirm', message: 'confirm: the two passwords differ' });
    return;
  }
  const credentials = { username, password: passwordDigest(password) };
  $('auth-submit').disabled = true;
  try {
    if (state.mode === 'signup') {
      await api('POST', '/signup', credentials);
    }
    const session = await api('POST', '/login', credentials);
    await showChat(session.username, session.unread_count);
    notice(state.mode === 'signup' ? `Welcome, ${session.username}.` : '');
    setMode('login');
  } catch (failure) {
    showError('auth', failure);
  } finally {
    $('auth-submit').disabled = false;
  }
}

async function logOut() {
  try {
    await api('POST', '/logout');
  } catch (failure) {
    notice(failure.message);
    return;
  }
  showAuth('Logged out.');
}

async function deleteAccount(event) {
  event.preventDefault();
  clearErrors('delete', ['password']);
  const password = $('delete-password').value;
  try {
    const reply = await api('POST', '/account/delete', { password: passwordDigest(password) });
    $('delete-password').value = '';
    showAuth(`Account deleted, with ${reply.deleted_messages} message(s).`);
  } catch (failure) {
    showError('delete', failure);
  }
}

// ---- The chat view ----

async function showChat(username, unread) {
  state.me = username;
  $('me-name').textContent = username;
  setUnread(unread);
  $('auth-view').hidden = true;
  $('chat-view').hidden = false;
  $('who').hidden = false;
  state.withUser = null;
  state.offset = 0;
  state.lastId = 0;
  await loadMessages();
  startEvents();
  searchAccounts('', 0);
  $('send-recipient').focus();
}

function setUnread(count) {
  const button = $('unread');
  button.textContent = `${count} unread`;
  button.classList.toggle('has-unread', count > 0);
}

async function refreshUnread() {
  try {
    const me = await api('GET', '/me');
    setUnread(me.unread_count);
  } catch (failure) {
    // Shown by the next action; a session that ended was handled by api().
  }
}

// Fetches the away messages (marking them delivered) and shows the inbox.
async function readUnread() {
  try {
    let fetched = 0;
    for (;;) {
      const reply = await api('POST', '/away', { limit: 1000 });
      fetched += reply.messages.length;
      if (reply.remaining === 0 || reply.messages.length === 0) break;
    }
    notice(`${fetched} message(s) marked as read.`);
    setUnread(0);
    openInbox();
  } catch (failure) {
    notice(failure.message);
  }
}

function openInbox() {
  state.withUser = null;
  state.offset = 0;
  loadMessages();
}

function openConversation(username) {
  clearErrors('send', ['recipient', 'content']);
  state.withUser = username;
  state.offset = 0;
  $('send-recipient').value = username;
  loadMessages();
  $('send-content').focus();
}

async function loadMessages() {
  $('messages-error').textContent = '';
  const params = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE });
  if (state.withUser) params.set('with_user', state.withUser);
  try {
    const page = await api('GET', `/messages?${params}`);
    state.messages = page.messages;
    state.total = page.total_count;
    for (const message of page.messages) {
      if (message.recipient === state.me) state.lastId = Math.max(state.lastId, message.id);
    }
  } catch (failure) {
    $('messages-error').textContent = failure.message;
    return;
  }
  renderMessages();
}

function renderMessages() {
  $('view-title').textContent = state.withUser ? `Conversation with ${state.withUser}` : 'Inbox';
  $('show-inbox').hidden = !state.withUser;
  const list = $('messages');
  list.replaceChildren();
  if (state.messages.length === 0) {
    list.append(element('li', 'empty', state.withUser ? 'No messages with this person yet.' : 'No messages yet.'));
  }
  for (const message of state.messages) list.append(messageItem(message));
  const first = state.total === 0 ? 0 : state.offset + 1;
  const last = state.offset + state.messages.length;
  $('messages-range').textContent = `${first}–${last} of ${state.total}`;
  $('messages-prev').disabled = state.offset === 0;
  $('messages-next').disabled = last >= state.total;
  updateDeleteButton();
}

function messageItem(message) {
  const incoming = message.recipient === state.me;
  const item = element('li', incoming ? 'message incoming' : 'message outgoing');
  item.dataset.id = String(message.id);
  const head = element('div', 'message-head');
  if (incoming) {
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.className = 'select';
    box.value = String(message.id);
    box.setAttribute('aria-label', `Select message ${message.id} from ${message.sender}`);
    box.addEventListener('change', updateDeleteButton);
    head.append(box);
  }
  const who = incoming ? message.sender : `to ${message.recipient}`;
  const person = element('button', 'person', who);
  person.type = 'button';
  person.title = `Conversation with ${incoming ? message.sender : message.recipient}`;
  person.addEventListener('click', () => openConversation(incoming ? message.sender : message.recipient));
  head.append(person);
  const time = element('time', 'time', formatTime(message.timestamp_ms));
  time.dateTime = new Date(message.timestamp_ms).toISOString();
  head.append(time);
  if (incoming && message.status === 'away') head.append(element('span', 'badge', 'unread'));
  item.append(head, element('p', 'content', message.content));
  return item;
}

function selectedIds() {
  return Array.from(document.querySelectorAll('#messages .select:checked'), (box) => Number(box.value));
}

function updateDeleteButton() {
  const count = selectedIds().length;
  const button = $('delete-selected');
  button.disabled = count === 0;
  button.textContent = count === 0 ? 'Delete selected' : `Delete ${count} selected`;
}

async function deleteSelected() {
  const ids = selectedIds();
  if (ids.length === 0) return;
  try {
    const reply = await api('POST', '/messages/delete', { ids });
    notice(`Deleted ${reply.deleted_count} message(s).`);
    if (state.offset > 0 && state.offset >= state.total - reply.deleted_count) {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
    }
    await loadMessages();
  } catch (failure) {
    $('messages-error').textContent = failure.message;
  }
}

async function sendMessage(event) {
  event.preventDefault();
  clearErrors('send', ['recipient', 'content']);
  const recipient = $('send-recipient').value.trim();
  const content = $('send-content').value;
  $('send-submit').disabled = true;
  try {
    const sent = await api('POST', '/messages', { recipient, content });
    $('send-content').value = '';
    notice(`Sent to ${recipient} (${sent.status === 'away' ? 'they are away: it waits for them' : 'delivered'}).`);
    if (state.withUser === recipient && state.offset === 0) {
      showNewMessage({
        id: sent.id, sender: state.me, recipient, content,
        timestamp_ms: sent.timestamp_ms, status: sent.status,
      });
    }
  } catch (failure) {
    showError('send', failure);
  } finally {
    $('send-submit').disabled = false;
    $('send-content').focus();
  }
}

// Puts a new message at the top of the listing shown, if it belongs there.
function showNewMessage(message) {
  if (state.messages.some((shown) => shown.id === message.id)) return;
  const belongs = state.withUser
    ? message.sender === state.withUser || message.recipient === state.withUser
    : message.recipient === state.me;
  if (!belongs) return;
  state.total += 1;
  if (state.offset !== 0) {
    renderMessages();
    return;
  }
  state.messages.unshift(message);
  state.messages.sort((a, b) => b.id - a.id);
  if (state.messages.length > PAGE_SIZE) state.messages.length = PAGE_SIZE;
  renderMessages();
}

// ---- Live messages (Server-Sent Events; the browser resumes with Last-Event-ID) ----

function startEvents() {
  stopEvents();
  const events = new EventSource(`/api/events?after=${state.lastId}`);
  state.events = events;
  events.addEventListener('open', () => {
    setLive(true);
    // Anything that arrived while the stream was being (re)opened is in the listing now.
    if (state.offset === 0) loadMessages();
  });
  events.addEventListener('message', (event) => {
    const message = JSON.parse(event.data);
    state.lastId = Math.max(state.lastId, message.id);
    showNewMessage(message);
    if (state.withUser !== message.sender) {
      notice(`New message from ${message.sender}.`);
    }
    refreshUnread();
  });
  events.addEventListener('session-ended', (event) => {
    stopEvents();
    showAuth(`Your session ended (${event.data}): log in again.`);
  });
  events.addEventListener('error', () => {
    setLive(false);
    if (events.readyState === EventSource.CLOSED && state.me) {
      // Refused outright (the session ended, or the server is gone): ask why.
      refreshUnread();
    }
  });
}

function stopEvents() {
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  setLive(false);
}

function setLive(live) {
  const badge = $('live');
  badge.textContent = live ? 'live' : 'offline';
  badge.classList.toggle('on', live);
}

// ---- Account search ----

async function searchAccounts(pattern, offset) {
  clearErrors('search', ['pattern']);
  const params = new URLSearchParams({ pattern, offset, limit: ACCOUNTS_PAGE_SIZE });
  try {
    const page = await api('GET', `/accounts?${params}`);
    state.accountsPattern = pattern;
    state.accountsOffset = offset;
    state.accountsTotal = page.total_count;
    renderAccounts(page.accounts);
  } catch (failure) {
    showError('search', failure, 'search-pattern-error');
  }
}

function renderAccounts(accounts) {
  const list = $('accounts');
  list.replaceChildren();
  if (accounts.length === 0) list.append(element('li', 'empty', 'Nobody matches.'));
  for (const account of accounts) {
    const item = element('li');
    const button = element('button', 'account', account.username);
    button.type = 'button';
    if (account.username === state.me) button.append(element('span', 'hint', ' (you)'));
    button.addEventListener('click', () => openConversation(account.username));
    item.append(button);
    list.append(item);
  }
  const first = state.accountsTotal === 0 ? 0 : state.accountsOffset + 1;
  const last = state.accountsOffset + accounts.length;
  $('accounts-range').textContent = `${first}–${last} of ${state.accountsTotal}`;
  $('accounts-prev').disabled = state.accountsOffset === 0;
  $('accounts-next').disabled = last >= state.accountsTotal;
}

// ---- Start ----

function wire() {
  $('mode-login').addEventListener('click', () => setMode('login'));
  $('mode-signup').addEventListener('click', () => setMode('signup'));
  $('auth-form').addEventListener('submit', submitAuth);
  $('logout').addEventListener('click', logOut);
  $('unread').addEventListener('click', readUnread);
  $('show-inbox').addEventListener('click', openInbox);
  $('send-form').addEventListener('submit', sendMessage);
  $('send-content').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('send-form').requestSubmit();
    }
  });
  $('delete-selected').addEventListener('click', deleteSelected);
  $('messages-prev').addEventListener('click', () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    loadMessages();
  });
  $('messages-next').addEventListener('click', () => {
    state.offset += PAGE_SIZE;
    loadMessages();
  });
  $('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    searchAccounts($('search-pattern').value.trim(), 0);
  });
  $('accounts-prev').addEventListener('click', () =>
    searchAccounts(state.accountsPattern, Math.max(0, state.accountsOffset - ACCOUNTS_PAGE_SIZE)));
  $('accounts-next').addEventListener('click', () =>
    searchAccounts(state.accountsPattern, state.accountsOffset + ACCOUNTS_PAGE_SIZE));
  $('delete-account-form').addEventListener('submit', deleteAccount);
  // A field's error goes as soon as the field is edited.
  for (const input of document.querySelectorAll('input, textarea')) {
    input.addEventListener('input', () => {
      const message = $(`${input.id}-error`);
      if (message) message.textContent = '';
      input.removeAttribute('aria-invalid');
    });
  }
}

async function start() {
  wire();
  setMode('login');
  try {
    const me = await api('GET', '/me');
    await showChat(me.username, me.unread_count);
  } catch (failure) {
    showAuth(failure.code === 'session_ended' ? '' : failure.message);
  }
}

start();
