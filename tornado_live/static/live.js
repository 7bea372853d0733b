/**
 * live.js: the browser client of tornado_live (wire protocol v1).
 *
 * One ES module, no dependencies, no build step. Serve this file and import it:
 *
 *     import {connect} from "/static/live/live.js";
 *
 *     const live = connect("/live", {onState: (state) => show(state)});
 *     const stop = live.subscribe("users", (event) => apply(event), {onRefetch: loadUsers});
 *     live.subscribe("users", (event) => apply(event), {onSnapshot: (users) => show(users)});
 *     live.on("updated_user", (event) => console.log(event.data.name));
 *     const taken = await live.request("email_taken", "ada@example.com");   // the reply's data
 *     live.send("typing", {field: "email"});                                // no reply awaited
 *
 * connect(url, options) -> Live
 *   url: where the server routes its LiveMixin handler: relative ("/live") or absolute,
 *   ws://, wss://, http:// or https://. The WebSocket URL (ws/wss) and the HTTP URL of the
 *   same route (http/https, for the Server-Sent Events fallback) are both derived from it.
 *   options (all optional):
 *     onState(state, live)  called on every change of live.state (see below).
 *     onError(error, live)  called with a LiveError for problems tied to no Promise: an error
 *                           frame without id (the server's answer to a failed send()), a
 *                           send() that could not go out, an onRefetch or onSnapshot that
 *                           failed, an unreadable frame. Default: console.warn.
 *     backoff: [firstMs, maxMs]   reconnect delays, default [500, 10000]: before attempt n
 *                           (0, 1, 2, ...) it waits min(maxMs, firstMs * 2**n) times a random
 *                           factor in [0.5, 1) (jitter, so that a restarted server is not hit
 *                           by every page at the same instant). n is back to 0 once live.
 *     transports            ["websocket", "sse"] (default): the order in which they are tried.
 *                           ["sse"] uses Server-Sent Events only; ["websocket"] never falls back.
 *     timeout               milliseconds request() waits for a reply, and send() for a
 *                           transport to send on, default 10000.
 *     WebSocket, EventSource, fetch   the implementations to use (default: the globals).
 *     token                 async () => "<token>": for a server whose handler authenticates
 *                           tokens (LiveMixin.authenticate). On every (re)connect of the
 *                           WebSocket the client calls it and sends {"type": "auth", "token"}
 *                           before anything else; when the server's "authed" says the token
 *                           expires, it calls it again ahead of that time (a quarter of the
 *                           token's life before, at most 60 s) and renews it over the open
 *                           socket. A refused token goes to onError ("unauthorized"); if the
 *                           callback throws, onError gets "token_failed" and the client
 *                           reconnects with the backoff. Over Server-Sent Events the token is
 *                           the stream URL's &token= (fetched before the streams open; a
 *                           stream refused "unauthorized" is opened again with a new one).
 *
 * live.subscribe(channel, handler?, {onRefetch?, onSnapshot?, onError?}) -> unsubscribe()
 *   handler(event) receives each event of the channel, a frame object
 *   {type, channel, offset, data} (a model's events also carry the document's version),
 *   once, in offset order. The client tracks the last offset seen per channel; on every
 *   (re)connect it subscribes again with since = that offset and the channel's epoch, so
 *   the server sends what was missed; events at or below the last offset are dropped,
 *   never delivered twice.
 *   onRefetch() is where the page loads the channel's state (GET /users): it is called
 *     - once for each subscribe() call, when the server first confirms the subscription (so
 *       the initial load and every later reload happen in one place);
 *     - for every subscription of the channel when, after a reconnect, the server answers
 *       recovered: false (its history no longer reaches back, or it restarted: new epoch);
 *     - when an event arrives after a gap in the offsets (an event was lost), or an event
 *       stream subscribed again without saying where it was, and the channel had moved on;
 *     - at the next confirmation again, if it threw or its Promise rejected.
 *     It is never called when the server recovered every missed event. It may return a
 *     Promise: until that settles, the channel's events are held back, then delivered in
 *     order, so apply them on top of what was fetched (they may repeat what it already shows;
 *     created/updated/deleted events carry whole documents, so applying them again is safe).
 *   onSnapshot(docs, {more}) makes it a snapshot channel: the client subscribes with
 *     "snapshot": true (over SSE, &snapshot=1) and the server's "subscribed" carries the
 *     channel's current documents, so the page needs no separate load. docs is the list of
 *     documents (each snapshot item's data) in the server's order; more is true when the
 *     server's limit cut it short. It is called
 *     - at the first confirmation (for every onSnapshot subscription of the channel, also
 *       when a later subscribe() adds one: the client asks for a new snapshot then);
 *     - whenever the client has to start over: after a reconnect the server answers
 *       recovered: false (new epoch, history gone) with a new snapshot; after a gap in the
 *       offsets the client subscribes again from its last offset, and the server sends the
 *       missed events or, if it no longer has them, a new snapshot; an event refetch_<name>
 *       (what models send for a write too big to announce document by document) makes it
 *       ask for a new snapshot;
 *     - at the next confirmation again (with a new snapshot), if it threw or its Promise
 *       rejected (reported as "snapshot_failed").
 *     It is never called when the server recovered every missed event. A snapshot replaces
 *     the whole state: the events that had not been delivered before it are dropped (it
 *     shows them), and the position becomes the snapshot's. While the Promise it returns
 *     (if any) is pending, the channel's events are held back, as for onRefetch.
 *     The client remembers the version of every document the snapshot and later events
 *     showed, and delivers an event with a version (model events) only if it is newer than
 *     that for event.data.id, so nothing older than what the page shows reaches handler or
 *     live.on() listeners; after a deleted_* event it forgets the id (a document made again
 *     with that id starts over at version 1). Events without a version always pass.
 *     onSnapshot and onRefetch exclude each other, for a call and for a channel: giving
 *     both, or one where the channel's other subscriptions use the other, throws a
 *     TypeError. Subscriptions with only a handler may join either kind of channel.
 *     A server without a snapshot of the channel refuses it: onError gets "no_snapshot".
 *   onError(error) is called with a LiveError when the server refuses the channel, or
 *     revokes it later ("revoked": the document it shows moved to where this client may
 *     not follow; nothing more of the channel comes)
 *     (error.code "forbidden", "invalid_channel", "too_many_channels", "unavailable",
 *     "no_snapshot", ...). The subscription stays registered and is tried again at the
 *     next reconnect.
 *   unsubscribe() removes this handler; when a channel has no handlers left, the client
 *   leaves it (an "unsubscribe" frame, or closes its event stream).
 *
 * live.on(type, handler) -> off()
 *   handler(event) for every event of that type on any subscribed channel: the talk's
 *   if (message.type == "updated_user") style. It subscribes to nothing by itself, and an
 *   event published to two subscribed channels (users and users/<id>) comes once per channel.
 *   Subscription handlers run first; both are held back while an onRefetch or onSnapshot
 *   is pending, and on a snapshot channel both get only events newer than the page shows.
 *
 * live.request(type, data?) -> Promise of the reply's data
 *   An application message, answered by the handler's method declared for that type with
 *   @message. Over a WebSocket it is a frame with an id, matched with its reply frame; over
 *   SSE it is a POST of the same frame to the HTTP URL (Content-Type: application/json). It
 *   rejects with a LiveError whose .code is the error frame's code ("unknown_type",
 *   "internal_error", or the application's own), or "timeout" (no reply within
 *   options.timeout), "disconnected" (the WebSocket closed after the message was sent: it may
 *   or may not have been handled, so it is not sent again), "network_error", "bad_response"
 *   (not a reply frame), or "closed" (live.close() was called); with a TypeError if type is
 *   not a string or data cannot be put in JSON. A request made while no transport is up
 *   waits for the next one (within the timeout).
 *
 * live.send(type, data?) -> undefined
 *   The same message without waiting for an answer: over a WebSocket a frame with no id,
 *   over SSE a POST whose reply is ignored. What goes wrong goes to options.onError: the
 *   server's error frame (over a WebSocket an error without id, over SSE the POST's answer),
 *   a POST that failed ("network_error", "bad_response"), a message that found no transport
 *   within options.timeout ("timeout": it is dropped then, never sent late), or a send after
 *   live.close() ("closed"). A message sent while no transport is up waits for the next one.
 *   Throws a TypeError if type is not a string or data cannot be put in JSON.
 *
 * live.position(channel) -> {epoch, offset} | null
 *   Where the client is in a subscribed channel: the epoch of the server's last "subscribed"
 *   and the last offset seen (null before the first "subscribed"). Within an epoch it never
 *   moves backwards; a new epoch (the server's history started over) starts it again, and
 *   so does a new snapshot (the events after the snapshot's offset come next).
 *
 * live.version(channel, id) -> number | null
 *   On a snapshot channel, the version of document `id` the page was given (by the last
 *   snapshot delivered or a later event): the one the page shows. null for a document it
 *   does not know (or knows as deleted), and on a channel subscribed without onSnapshot.
 *
 * live.state: "connecting" | "live" | "reconnecting" | "closed"
 *   "connecting" until the client is live for the first time (including failed first
 *   attempts); "live" when a transport is up and every subscribed channel is confirmed (or
 *   refused) by the server; "reconnecting" after it was live and lost the connection (or an
 *   event stream), until it is live again; "closed" after live.close(), for good.
 * live.transport: "websocket" | "sse" | null: the transport in use or being tried.
 * live.close(): closes the connection, stops reconnecting, rejects pending requests
 *   ("closed") and drops the sends still waiting for a transport.
 *
 * Also exported: Live (the class connect() instantiates), LiveError (an Error with .code and,
 * for an error frame, .frame), backoffDelay(attempt, [firstMs, maxMs], random) (the delay
 * before reconnect attempt `attempt`), endpoints(url, base) ({ws, http}, the URLs derived),
 * reconnectHint(code, reason) (the delay a 1001 close asks for, in ms, or null).
 *
 * Reconnects and fallback. After a lost connection the client reconnects with the backoff
 * (after the hinted delay instead when the server closed with 1001 and reconnect=<ms>: a
 * graceful shutdown; it then recovers with since, as after any reconnect)
 * (at once when the browser fires "online"). The WebSocket is tried first. If it cannot be
 * opened (it errors or closes before "open") twice in a row, or the WebSocket constructor is
 * missing, the client uses Server-Sent Events: exactly one EventSource per subscribed
 * channel, at <HTTP URL>?channel=<c>, plus &since=<offset>&epoch=<epoch> when the client
 * already has a position in the channel (and &snapshot=1 for a snapshot channel); request()
 * and send() become POSTs to the HTTP URL.
 * The server gives every event and "subscribed" message the id <epoch>:<offset>, so when a
 * stream drops, the browser's own reconnect sends Last-Event-ID: <epoch>:<offset> (the last
 * one received), which the server prefers to the URL's since: it recovers from there, and the
 * client lets it (readyState CONNECTING). The client never reads the id itself: offsets and
 * epochs come from the JSON frames. When the browser gives up on a stream (CLOSED: an HTTP
 * error, say a 502 during a deploy), the client creates a new EventSource for the channel,
 * with the backoff, its URL carrying since and epoch. A channel the server refuses (HTTP 4xx
 * with an error frame) goes to onError instead of being retried. If the event streams cannot
 * be opened either (the server is down, not only WebSockets blocked), the client goes back
 * to trying the WebSocket, with the backoff. Once a transport has worked, the client keeps
 * it for the life of this Live object: after a server restart a WebSocket page stays on
 * WebSockets, and an SSE page does not probe WebSockets again (reload the page to try again,
 * for instance after moving to another network).
 */

const BACKOFF = [500, 10000];
const TIMEOUT = 10000;
const WEBSOCKET_TRIES = 2; // failures before "open", in a row, before falling back
const CONNECTING = 0; // EventSource.CONNECTING
const OPEN = 1; // WebSocket.OPEN

/** An error frame from the server, or a failure of the client; .code says which. */
export class LiveError extends Error {
  constructor(code, message, frame = null) {
    super(message);
    this.name = "LiveError";
    this.code = code;
    this.frame = frame;
  }
}

/** Milliseconds to wait before reconnect attempt `attempt` (0, 1, ...): capped, jittered. */
export function backoffDelay(attempt, [first, max] = BACKOFF, random = Math.random) {
  return Math.min(max, first * 2 ** attempt) * (0.5 + random() / 2);
}

/**
 * The milliseconds a WebSocket close asks the client to wait before reconnecting: for code
 * 1001 (a server shutting down) whose reason carries reconnect=<ms>; null otherwise.
 */
export function reconnectHint(code, reason) {
  if (code !== 1001 || typeof reason !== "string") return null;
  const found = /(?:^|[\s;,])reconnect=(\d{1,9})(?:$|[\s;,])/.exec(reason);
  return found ? Number(found[1]) : null;
}

/** The WebSocket and HTTP URLs of `url` (resolved against `base`, the page by default). */
export function endpoints(url, base = globalThis.location?.href) {
  const resolved = new URL(url, base);
  if (!["http:", "https:", "ws:", "wss:"].includes(resolved.protocol)) {
    throw new TypeError(`live.js: expected an http(s) or ws(s) URL, got ${resolved.href}`);
  }
  resolved.hash = "";
  const secure = resolved.protocol === "https:" || resolved.protocol === "wss:";
  const ws = new URL(resolved.href);
  ws.protocol = secure ? "wss:" : "ws:";
  const http = new URL(resolved.href);
  http.protocol = secure ? "https:" : "http:";
  return {ws: ws.href, http: http.href};
}

/** Open a connection to the tornado_live handler at `url`; see the module's documentation. */
export function connect(url, options = {}) {
  return new Live(url, options);
}

export class Live {
  #urls;
  #options;
  #WebSocket;
  #EventSource;
  #fetch;
  #transports;
  #channels = new Map(); // name -> channel record
  #types = new Map(); // event type -> Set of handlers
  #pending = new Map(); // id -> a request() waiting for its reply
  #outbox = []; // requests and sends waiting for a transport
  #nextId = 1;
  #socket = null;
  #settled = null; // the transport that has worked, kept from then on
  #candidate = 0; // index into #transports while none has worked
  #socketFailures = 0;
  #attempt = 0;
  #timer = null;
  #wasLive = false;
  #authing = false; // the WebSocket is open, its auth frame not sent yet
  #authTimer = null; // renews the token ahead of its expiry
  #token = null; // the last token the callback gave (for event-stream URLs)
  #online = () => this.#wake();

  /** @type {"connecting" | "live" | "reconnecting" | "closed"} */
  state = "connecting";
  /** @type {"websocket" | "sse" | null} */
  transport = null;

  constructor(url, options = {}) {
    this.#urls = endpoints(url);
    this.#options = {
      ...options,
      backoff: options.backoff ?? BACKOFF,
      timeout: options.timeout ?? TIMEOUT,
    };
    this.#WebSocket = "WebSocket" in options ? options.WebSocket : globalThis.WebSocket;
    this.#EventSource = "EventSource" in options ? options.EventSource : globalThis.EventSource;
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#transports = (options.transports ?? ["websocket", "sse"]).filter((name) => {
      if (name !== "websocket" && name !== "sse") {
        throw new TypeError(`live.js: unknown transport ${JSON.stringify(name)}`);
      }
      return name === "websocket" ? this.#WebSocket : this.#EventSource;
    });
    if (this.#transports.length === 0) {
      throw new TypeError("live.js: neither WebSocket nor EventSource is available");
    }
    globalThis.addEventListener?.("online", this.#online);
    // In a microtask, so that the subscribe() calls right after connect() join the first try.
    queueMicrotask(() => this.#connect());
  }

  // -- the API ----------------------------------------------------------------------------------

  subscribe(channel, handler = null, {onRefetch = null, onSnapshot = null, onError = null} = {}) {
    if (typeof channel !== "string" || channel === "") {
      throw new TypeError(
        `live.js: a channel is a non-empty string, got ${JSON.stringify(channel)}`,
      );
    }
    if (onSnapshot !== null && typeof onSnapshot !== "function") {
      throw new TypeError("live.js: onSnapshot is a function");
    }
    if (onSnapshot && onRefetch) {
      throw new TypeError(
        `live.js: subscribe("${channel}") takes onSnapshot or onRefetch, not both: ` +
          "a snapshot is the state onRefetch would load",
      );
    }
    const subscription = {handler, onRefetch, onSnapshot, onError, ready: false};
    let record = this.#channels.get(channel);
    if (record && onRefetch && record.snapshot) {
      throw new TypeError(
        `live.js: "${channel}" is subscribed with onSnapshot; onRefetch cannot join it`,
      );
    }
    if (record && onSnapshot && [...record.subscriptions].some((other) => other.onRefetch)) {
      throw new TypeError(
        `live.js: "${channel}" is subscribed with onRefetch; onSnapshot cannot join it`,
      );
    }
    if (this.state === "closed") return () => {};
    if (record === undefined) {
      record = {
        name: channel,
        subscriptions: new Set(),
        snapshot: onSnapshot !== null, // a snapshot channel: subscribed with "snapshot": true
        versions: new Map(), // snapshot channels: document id -> the version delivered
        fresh: false, // the next subscribe asks for a new snapshot (no since)
        awaiting: false, // a subscribe asking for a new snapshot is unanswered
        resync: null, // after a gap (snapshot channels): the events held until "subscribed"
        epoch: null,
        offset: null, // the last offset seen; null until the first "subscribed"
        confirmed: false, // "subscribed" received on the current connection
        refused: false, // an error answered the current subscribe
        stale: false, // an onRefetch failed: refetch at the next confirmation
        holds: 0, // pending onRefetch promises
        queue: [], // events held back meanwhile
        requestId: null, // id of the subscribe frame in flight (WebSocket)
        source: null, // its one EventSource (SSE)
        sourceSpoke: false, // it delivered a message
        sourceAttempt: 0,
        sourceTimer: null, // set while waiting to re-create it (backoff)
      };
      record.subscriptions.add(subscription);
      this.#channels.set(channel, record);
      this.#join(record);
    } else {
      record.subscriptions.add(subscription);
      if (onSnapshot) {
        // Its first snapshot is a new one, for every onSnapshot of the channel.
        record.snapshot = true;
        this.#startOver(record);
      } else if (record.confirmed && !record.snapshot) {
        queueMicrotask(() => this.#refetch(record, [subscription]));
      }
    }
    return () => {
      if (!record.subscriptions.delete(subscription) || record.subscriptions.size > 0) return;
      if (this.#channels.get(channel) === record) this.#channels.delete(channel);
      this.#leave(record);
      this.#update();
    };
  }

  position(channel) {
    const record = this.#channels.get(channel);
    return record && record.offset !== null ? {epoch: record.epoch, offset: record.offset} : null;
  }

  version(channel, id) {
    const record = this.#channels.get(channel);
    const key = idKey(id);
    if (!record?.snapshot || key === null) return null;
    return record.versions.get(key) ?? null;
  }

  on(type, handler) {
    if (!this.#types.has(type)) this.#types.set(type, new Set());
    const handlers = this.#types.get(type);
    const entry = (event) => handler(event); // the same function may be added twice
    handlers.add(entry);
    return () => handlers.delete(entry);
  }

  request(type, data = null) {
    if (this.state === "closed") {
      return Promise.reject(new LiveError("closed", "live.js: the connection was closed"));
    }
    const id = this.#nextId++;
    let text;
    try {
      text = encode({type, id, data}, "request");
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      const request = {type, id, text, resolve, reject, socket: null, abort: null};
      request.timer = setTimeout(() => {
        this.#settle(id);
        request.abort?.abort();
        reject(
          new LiveError("timeout", `no reply to "${type}" within ${this.#options.timeout} ms`),
        );
      }, this.#options.timeout);
      this.#pending.set(id, request);
      this.#transmit(request);
    });
  }

  send(type, data = null) {
    const text = encode({type, data}, "send"); // no id: nothing waits for a reply
    if (this.state === "closed") {
      this.#error(new LiveError("closed", `live.js: "${type}" not sent: the connection is closed`));
      return undefined;
    }
    this.#transmit({type, text, resolve: null, timer: null});
    return undefined;
  }

  close() {
    if (this.state === "closed") return;
    this.#setState("closed");
    clearTimeout(this.#timer);
    clearTimeout(this.#authTimer);
    globalThis.removeEventListener?.("online", this.#online);
    this.#dropSocket(1000, "closed by the page");
    for (const record of this.#channels.values()) this.#closeStream(record);
    for (const item of this.#outbox) clearTimeout(item.timer);
    this.#outbox = [];
    for (const [id, request] of this.#pending) {
      this.#settle(id);
      request.abort?.abort();
      request.reject(new LiveError("closed", "live.js: the connection was closed"));
    }
  }

  // -- connecting -------------------------------------------------------------------------------

  #connect() {
    this.#timer = null;
    if (this.state === "closed") return;
    const transport = this.#settled ?? this.#transports[this.#candidate % this.#transports.length];
    this.transport = transport;
    if (transport === "websocket") this.#openSocket();
    else this.#openStreams();
  }

  #retry(hint = null) {
    if (this.state === "closed" || this.#timer !== null) return;
    this.#setState(this.#wasLive ? "reconnecting" : "connecting");
    const delay = hint ?? backoffDelay(this.#attempt++, this.#options.backoff);
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  /** The browser says it is online again: retry now rather than at the end of the backoff. */
  #wake() {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#connect();
    }
    for (const record of this.#channels.values()) {
      if (record.sourceTimer !== null) {
        clearTimeout(record.sourceTimer);
        record.sourceTimer = null;
        this.#openStream(record);
      }
    }
  }

  /** The transport in use failed before it ever worked: try the next one (or again). */
  #fallBack(immediately) {
    this.#candidate += 1;
    if (immediately) this.#connect();
    else this.#retry();
  }

  #setState(state) {
    if (this.state === state || this.state === "closed") return;
    this.state = state;
    if (state === "live") {
      this.#wasLive = true;
      this.#attempt = 0;
    }
    try {
      this.#options.onState?.(state, this);
    } catch (error) {
      report(error);
    }
  }

  /** Live once the transport is up and every channel has its answer. */
  #update() {
    if (this.state === "closed" || this.state === "live") return;
    const up =
      this.transport === "sse"
        ? this.#settled === "sse" || this.#channels.size === 0
        : this.#socketReady();
    if (!up) return;
    for (const record of this.#channels.values()) {
      if (!record.confirmed && !record.refused) return;
    }
    this.#setState("live");
  }

  #join(record) {
    if (this.transport === "websocket" && this.#socketReady()) {
      this.#subscribeFrame(record);
    } else if (this.transport === "sse" && this.#timer === null) {
      this.#openStream(record);
    }
  }

  #leave(record) {
    if (
      this.transport === "websocket" &&
      this.#socketReady() &&
      record.requestId !== null
    ) {
      this.#socket.send(JSON.stringify({type: "unsubscribe", channel: record.name}));
    }
    this.#closeStream(record);
  }

  // -- WebSocket --------------------------------------------------------------------------------

  #openSocket() {
    let socket;
    let opened = false;
    try {
      socket = new this.#WebSocket(this.#urls.ws);
    } catch (error) {
      // A blocked or malformed URL can throw at once: the same as failing before "open".
      this.#socketFailed();
      return;
    }
    this.#socket = socket;
    socket.onopen = () => {
      if (socket !== this.#socket) return;
      opened = true;
      this.#socketFailures = 0;
      this.#settled = "websocket";
      if (this.#options.token) this.#authenticate(socket, true);
      else this.#opened();
    };
    socket.onmessage = (message) => {
      if (socket === this.#socket) this.#receive(message.data);
    };
    socket.onclose = (event) => {
      if (socket !== this.#socket) return;
      this.#socket = null;
      this.#authing = false;
      clearTimeout(this.#authTimer);
      if (!opened) {
        this.#socketFailed();
        return;
      }
      if (event?.code === 4003) {
        this.#error(new LiveError("disconnected", `the server disconnected: ${event.reason}`));
      }
      this.#lost(socket);
      // A server shutting down (1001, "reconnect=<ms>") says when to come back.
      this.#retry(reconnectHint(event?.code, event?.reason));
    };
    socket.onerror = () => {}; // a "close" always follows
  }

  /** Open and ready: subscribe every channel, send what waited. */
  #opened() {
    for (const record of this.#channels.values()) {
      record.confirmed = record.refused = false;
      this.#subscribeFrame(record);
    }
    this.#flush();
    this.#update();
  }

  /** The socket can take frames: open, and its auth frame (if any) sent first. */
  #socketReady() {
    return this.#socket?.readyState === OPEN && !this.#authing;
  }

  /**
   * Ask options.token() for a token and send it in an auth frame: first thing on a new
   * socket (nothing else goes out before it), or over the open socket to renew it.
   */
  #authenticate(socket, first) {
    if (first) this.#authing = true;
    new Promise((resolve) => resolve(this.#options.token())).then(
      (token) => {
        if (socket !== this.#socket || socket.readyState !== OPEN) return;
        this.#token = token;
        socket.send(JSON.stringify({type: "auth", id: this.#nextId++, token}));
        if (first) {
          this.#authing = false;
          this.#opened();
        }
      },
      (error) => {
        if (socket !== this.#socket) return;
        this.#error(new LiveError("token_failed", `options.token() failed: ${error}`));
        if (first) socket.close(1000, "no token");
      },
    );
  }

  /** The server accepted a token until `expires` (UNIX seconds): renew it ahead of then. */
  #authed(frame) {
    clearTimeout(this.#authTimer);
    this.#authTimer = null;
    if (typeof frame.expires !== "number" || !this.#options.token) return;
    const lifetime = frame.expires * 1000 - Date.now();
    const delay = Math.max(0, lifetime - Math.min(60000, lifetime / 4));
    const socket = this.#socket;
    this.#authTimer = setTimeout(() => {
      this.#authTimer = null;
      if (socket === this.#socket && this.#socketReady()) this.#authenticate(socket, false);
    }, delay);
  }

  #socketFailed() {
    this.#socket = null;
    this.#socketFailures += 1;
    const canFallBack = this.#settled === null && this.#transports.length > 1;
    if (canFallBack && this.#socketFailures >= WEBSOCKET_TRIES) {
      this.#socketFailures = 0;
      this.#fallBack(true);
    } else {
      this.#retry();
    }
  }

  /** The socket closed: its channels are unconfirmed, its unanswered sends rejected. */
  #lost(socket) {
    for (const record of this.#channels.values()) {
      record.confirmed = false;
      record.requestId = null;
      record.awaiting = false;
    }
    for (const [id, request] of this.#pending) {
      if (request.socket === socket) {
        this.#settle(id);
        request.reject(
          new LiveError(
            "disconnected",
            `the connection closed before "${request.type}" was answered`,
          ),
        );
      }
    }
  }

  #dropSocket(code, reason) {
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(code, reason);
      } catch (error) {
        // already closing
      }
    }
  }

  #subscribeFrame(record) {
    const id = this.#nextId++;
    const frame = {type: "subscribe", channel: record.name, id};
    const since = record.offset !== null && record.epoch !== null && !record.fresh;
    if (since) {
      frame.since = record.offset;
      frame.epoch = record.epoch;
    }
    if (record.snapshot) frame.snapshot = true;
    record.awaiting = record.snapshot && !since;
    record.requestId = id;
    this.#socket.send(JSON.stringify(frame));
  }

  // -- Server-Sent Events -----------------------------------------------------------------------

  #openStreams() {
    this.#dropSocket(1000, "falling back to Server-Sent Events");
    if (this.#options.token && this.#token === null) {
      // The streams' URLs carry the token: get one first.
      this.#timer = -1; // (not live yet: requests and sends wait meanwhile)
      this.#freshToken().then(() => {
        if (this.#timer !== -1) return;
        this.#timer = null;
        this.#openStreams();
      });
      return;
    }
    for (const record of this.#channels.values()) this.#openStream(record);
    this.#flush();
    this.#update();
  }

  /**
   * The channel's stream URL: with since and epoch when the client has a position in it.
   * The browser's own reconnects of that stream send Last-Event-ID (<epoch>:<offset>),
   * which the server prefers to the URL's since, so the URL never needs to change.
   */
  #streamUrl(record) {
    const url = new URL(this.#urls.http);
    url.searchParams.set("channel", record.name);
    if (record.offset !== null && record.epoch !== null && !record.fresh) {
      url.searchParams.set("since", String(record.offset));
      url.searchParams.set("epoch", record.epoch);
    }
    if (record.snapshot) url.searchParams.set("snapshot", "1");
    if (this.#token !== null) url.searchParams.set("token", this.#token);
    return url.href;
  }

  /** Create the channel's one EventSource (closing the one it had, if any). */
  #openStream(record) {
    this.#closeStream(record);
    if (this.state === "closed" || this.#channels.get(record.name) !== record) return;
    const url = this.#streamUrl(record);
    const source = new this.#EventSource(url);
    record.source = source;
    record.sourceSpoke = false;
    record.confirmed = record.refused = false;
    record.awaiting = record.snapshot && !new URL(url).searchParams.has("since");
    source.onmessage = (message) => {
      if (record.source !== source) return;
      record.sourceSpoke = true;
      const frame = this.#receive(message.data);
      if (frame?.type === "subscribed" && frame.channel === record.name) {
        this.#settled ??= "sse";
        record.sourceAttempt = 0;
        this.#update();
      }
    };
    source.onerror = () => {
      if (record.source !== source) return;
      record.confirmed = false;
      if (source.readyState === CONNECTING && this.#settled === "sse") {
        // The browser reconnects by itself, sending Last-Event-ID: <epoch>:<offset>.
        if (this.#wasLive) this.#setState("reconnecting");
        return;
      }
      this.#closeStream(record);
      if (record.sourceSpoke) this.#streamRetry(record);
      else this.#streamRefused(record, url);
    };
  }

  /** A new token from options.token() for the event streams' URLs (kept on failure). */
  async #freshToken() {
    try {
      this.#token = await this.#options.token();
    } catch (error) {
      this.#error(new LiveError("token_failed", `options.token() failed: ${error}`));
    }
  }

  #closeStream(record) {
    clearTimeout(record.sourceTimer);
    record.sourceTimer = null;
    if (record.source) {
      record.source.onmessage = record.source.onerror = null;
      record.source.close();
      record.source = null;
    }
  }

  #streamRetry(record) {
    // Only for the streams of the attempt in progress (not one already given up on).
    if (this.state === "closed" || this.transport !== "sse" || this.#timer !== null) return;
    if (this.#settled !== "sse") {
      // Event streams never worked either: the server is unreachable. Back to the first.
      for (const other of this.#channels.values()) this.#closeStream(other);
      this.#fallBack(false);
      return;
    }
    if (this.#wasLive) this.#setState("reconnecting");
    const delay = backoffDelay(record.sourceAttempt++, this.#options.backoff);
    record.sourceTimer = setTimeout(() => {
      record.sourceTimer = null;
      this.#openStream(record);
    }, delay);
  }

  /** A stream failed before its first message: a refused channel (4xx), or no server? */
  async #streamRefused(record, url) {
    let frame = null;
    try {
      const response = await this.#fetch(url, {headers: {Accept: "text/event-stream"}});
      if (response.status >= 400 && response.status < 500) frame = await response.json();
      else response.body?.cancel();
    } catch (error) {
      // unreachable, or not JSON: not a refusal
    }
    if (this.state === "closed" || this.#channels.get(record.name) !== record || record.source) {
      return;
    }
    if (frame?.type !== "error") {
      this.#streamRetry(record);
      return;
    }
    if (frame.code === "unauthorized" && this.#options.token && !record.retoken) {
      // The URL's token expired: once, a new token and the stream again (with the backoff).
      record.retoken = true;
      await this.#freshToken();
      this.#streamRetry(record);
      return;
    }
    record.retoken = false;
    this.#settled ??= "sse";
    record.refused = true;
    record.awaiting = false;
    this.#refused(record, frame);
    this.#update();
  }

  // -- frames -----------------------------------------------------------------------------------

  #receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      this.#error(
        new LiveError(
          "invalid_json",
          `live.js: a frame that is not JSON: ${String(text).slice(0, 100)}`,
        ),
      );
      return null;
    }
    if (frame === null || typeof frame !== "object") return null;
    const record =
      typeof frame.channel === "string" ? this.#channels.get(frame.channel) : undefined;
    switch (frame.type) {
      case "subscribed":
        if (record && (this.transport === "sse" || frame.id === record.requestId)) {
          this.#subscribed(record, frame);
        }
        break;
      case "unsubscribed":
        break;
      case "authed":
        this.#authed(frame);
        break;
      case "reply": {
        const request = this.#pending.get(frame.id);
        if (request) {
          this.#settle(frame.id);
          request.resolve(frame.data);
        }
        break;
      }
      case "error": {
        const request = frame.id === undefined ? undefined : this.#pending.get(frame.id);
        // A refused subscribe: its error carries the frame's id, not always the channel.
        const refused =
          frame.id === undefined
            ? undefined
            : [...this.#channels.values()].find((candidate) => candidate.requestId === frame.id);
        if (request) {
          this.#settle(frame.id);
          request.reject(errorOf(frame));
        } else if (refused) {
          refused.refused = true;
          refused.awaiting = false;
          this.#refused(refused, frame);
          this.#update();
        } else if (frame.code === "revoked" && record) {
          // No longer allowed (what the channel shows changed hands): nothing more of it
          // comes; its subscriptions hear why. An event stream of it is closed.
          record.refused = true;
          record.confirmed = false;
          if (record.source) this.#closeStream(record);
          this.#refused(record, frame);
          this.#update();
        } else {
          this.#error(errorOf(frame));
        }
        break;
      }
      default:
        if (record && !record.refused && Number.isInteger(frame.offset)) this.#event(record, frame);
    }
    return frame;
  }

  #subscribed(record, frame) {
    if (record.snapshot) {
      record.confirmed = true;
      record.refused = false;
      this.#snapshotSubscribed(record, frame);
      this.#update();
      return;
    }
    const first = record.offset === null;
    // Subscribed again without asking to recover (an event stream reconnecting without
    // Last-Event-ID): events were lost if the channel moved on, or its history was reset.
    const moved =
      frame.recovered === undefined &&
      (frame.epoch !== record.epoch || frame.offset !== record.offset);
    const epoch = frame.epoch ?? null;
    // Never backwards within an epoch: events at or below the offset seen stay dropped.
    const keep = !first && epoch === record.epoch && frame.offset < record.offset;
    record.epoch = epoch;
    if (!keep) record.offset = frame.offset;
    record.confirmed = true;
    record.refused = false;
    if (first || moved || frame.recovered === false || record.stale) {
      this.#refetch(record, [...record.subscriptions]);
    } else {
      const newcomers = [...record.subscriptions].filter((subscription) => !subscription.ready);
      if (newcomers.length) this.#refetch(record, newcomers);
    }
    this.#update();
  }

  /** A snapshot channel's "subscribed": a new snapshot, or the missed events recovered. */
  #snapshotSubscribed(record, frame) {
    const buffered = record.resync ?? [];
    record.resync = null;
    record.awaiting = false;
    const epoch = frame.epoch ?? null;
    if (Array.isArray(frame.snapshot)) {
      // The state at frame.offset: it supersedes whatever waits to be delivered, and the
      // position follows it (the events after it come next, whatever was seen before).
      record.epoch = epoch;
      record.offset = frame.offset;
      record.fresh = false;
      record.queue = [{snapshot: frame}];
      this.#drain(record);
      return;
    }
    if (frame.recovered === false) {
      // Not recovered, and no snapshot came with it: ask for one.
      record.epoch = epoch;
      record.offset = frame.offset;
      this.#startOver(record);
      return;
    }
    if (frame.recovered === undefined) {
      // Asked for a snapshot without since, and none came: the server has none to give.
      record.epoch = epoch;
      record.offset = frame.offset;
      record.fresh = false;
      this.#refused(record, {
        type: "error",
        code: "no_snapshot",
        message: `the server sent no snapshot of ${record.name}`,
        channel: record.name,
      });
      return;
    }
    // Recovered: the missed events came before this frame (held in `buffered` after a gap:
    // the old subscription's events after the gap, and the server's replay from the offset
    // before it, so each at most twice; in offset order, once each).
    const replay = buffered
      .filter((event) => event.offset > record.offset && event.offset <= frame.offset)
      .sort((a, b) => a.offset - b.offset)
      .filter((event, index, events) => index === 0 || events[index - 1].offset !== event.offset);
    for (const event of replay) this.#accept(record, event);
    record.offset = Math.max(record.offset, frame.offset);
    if (record.fresh) this.#startOver(record);
  }

  #event(record, frame) {
    if (record.resync !== null) {
      record.resync.push(frame); // until the "subscribed" answering the resubscription
      return;
    }
    if (record.offset === null || frame.offset <= record.offset) return; // not ours yet, or seen
    if (frame.offset > record.offset + 1) {
      // A gap: events were lost.
      if (record.snapshot) {
        // Subscribe again from the last offset seen: the server sends the missed events,
        // or a new snapshot if it no longer has them.
        record.resync = [frame];
        this.#resubscribe(record);
        return;
      }
      this.#refetch(record, [...record.subscriptions]);
    }
    this.#accept(record, frame);
  }

  /** The channel's next event, in offset order: delivered, or queued behind a hold. */
  #accept(record, frame) {
    record.offset = frame.offset;
    if (record.holds > 0 || record.queue.length > 0) record.queue.push(frame);
    else this.#deliver(record, frame);
    // What models send when a write was too big to announce document by document.
    const refetch = typeof frame.type === "string" && frame.type.startsWith("refetch_");
    if (record.snapshot && refetch && frame.version === undefined) this.#startOver(record);
  }

  /** A snapshot channel needs a new snapshot: subscribe again without since. */
  #startOver(record) {
    record.fresh = true;
    if (!record.awaiting) this.#resubscribe(record);
  }

  /** Send the channel's subscribe again (a new frame, or a new event stream). */
  #resubscribe(record) {
    if (this.transport === "websocket") {
      if (this.#socketReady()) {
        record.confirmed = false;
        this.#subscribeFrame(record);
      }
    } else if (this.transport === "sse" && record.source !== null) {
      this.#openStream(record); // else the stream about to be made asks as it should
    }
  }

  /** Deliver what waits, in order, until a pending callback holds the channel again. */
  #drain(record) {
    while (record.holds === 0 && record.queue.length > 0) {
      const item = record.queue.shift();
      if (item.snapshot) this.#showSnapshot(record, item.snapshot);
      else this.#deliver(record, item);
    }
  }

  /** The versions the snapshot shows become the channel's; then each onSnapshot. */
  #showSnapshot(record, frame) {
    const items = frame.snapshot.filter((item) => item !== null && typeof item === "object");
    record.versions = new Map();
    for (const item of items) {
      const key = idKey(item.data?.id);
      if (key !== null && Number.isInteger(item.version)) record.versions.set(key, item.version);
    }
    const more = frame.more === true;
    const calls = [...record.subscriptions]
      .filter((subscription) => subscription.onSnapshot)
      .map(
        (subscription) =>
          new Promise((resolve) =>
            resolve(subscription.onSnapshot(items.map((item) => item.data), {more})),
          ),
      );
    record.holds += 1;
    Promise.allSettled(calls).then((results) => {
      for (const result of results.filter((result) => result.status === "rejected")) {
        record.fresh = true; // a new snapshot at the next confirmation
        this.#error(
          new LiveError(
            "snapshot_failed",
            `onSnapshot failed for ${record.name}: ${result.reason}`,
          ),
        );
      }
      record.holds -= 1;
      this.#drain(record);
    });
  }

  /** For a snapshot channel: is the event newer than what was delivered of its document? */
  #newer(record, frame) {
    const key = idKey(frame.data?.id);
    if (!Number.isInteger(frame.version) || key === null) return true;
    const known = record.versions.get(key);
    if (known !== undefined && frame.version <= known) return false;
    // Gone: a document made again with that id starts over at version 1.
    if (String(frame.type).startsWith("deleted_")) record.versions.delete(key);
    else record.versions.set(key, frame.version);
    return true;
  }

  #deliver(record, frame) {
    if (record.snapshot && !this.#newer(record, frame)) return;
    for (const subscription of [...record.subscriptions]) {
      if (subscription.handler) call(subscription.handler, frame);
    }
    for (const handler of [...(this.#types.get(frame.type) ?? [])]) call(handler, frame);
  }

  #refetch(record, subscriptions) {
    record.holds += 1;
    const calls = subscriptions.map((subscription) => {
      subscription.ready = true;
      return subscription.onRefetch
        ? new Promise((resolve) => resolve(subscription.onRefetch()))
        : null;
    });
    Promise.allSettled(calls).then((results) => {
      const failed = results.filter((result) => result.status === "rejected");
      record.stale = failed.length > 0;
      for (const result of failed) {
        this.#error(
          new LiveError("refetch_failed", `onRefetch failed for ${record.name}: ${result.reason}`),
        );
      }
      record.holds -= 1;
      this.#drain(record);
    });
  }

  #refused(record, frame) {
    const error = errorOf(frame);
    let told = false;
    for (const subscription of record.subscriptions) {
      if (subscription.onError) {
        told = true;
        call(subscription.onError, error);
      }
    }
    if (!told) this.#error(error);
  }

  #error(error) {
    if (this.#options.onError) call(this.#options.onError, error, this);
    else console.warn("live.js:", error.message);
  }

  // -- request and send ------------------------------------------------------------------------

  /** Send a request's or a send's frame now if a transport is up, else queue it. */
  #transmit(item) {
    if (this.transport === "websocket" && this.#socketReady()) {
      this.#sent(item);
      item.socket = this.#socket;
      this.#socket.send(item.text);
    } else if (this.transport === "sse" && this.#timer === null) {
      this.#sent(item);
      this.#post(item);
    } else {
      this.#outbox.push(item);
      if (item.resolve === null && item.timer === null) {
        // A send(): nobody waits for it, so it gives up by itself rather than go out late.
        item.timer = setTimeout(() => {
          this.#unqueue(item);
          this.#error(
            new LiveError(
              "timeout",
              `"${item.type}" not sent: no connection within ${this.#options.timeout} ms`,
            ),
          );
        }, this.#options.timeout);
      }
    }
  }

  /** A send() leaves the outbox: its own timer ends (a request's runs until its reply). */
  #sent(item) {
    if (item.resolve === null) {
      clearTimeout(item.timer);
      item.timer = null;
    }
  }

  /** Send what waited for a transport, in order. */
  #flush() {
    const waiting = this.#outbox;
    this.#outbox = [];
    for (const item of waiting) this.#transmit(item);
  }

  #unqueue(item) {
    const index = this.#outbox.indexOf(item);
    if (index >= 0) this.#outbox.splice(index, 1);
  }

  /** POST the frame to the HTTP URL; a request settles with the answer, a send reports. */
  async #post(item) {
    const waited = item.resolve !== null;
    if (waited) item.abort = new AbortController();
    let frame;
    try {
      const headers = {"Content-Type": "application/json", Accept: "application/json"};
      if (this.#options.token) {
        // A message over HTTP carries the token too (the server's authenticate decides).
        if (this.#token === null) await this.#freshToken();
        if (this.#token !== null) headers.Authorization = `Bearer ${this.#token}`;
      }
      const response = await this.#fetch(this.#urls.http, {
        method: "POST",
        headers,
        body: item.text,
        signal: item.abort?.signal,
      });
      try {
        frame = await response.json();
      } catch (error) {
        frame = {
          type: "error",
          code: "bad_response",
          message: `HTTP ${response.status} without a JSON frame`,
        };
      }
    } catch (error) {
      frame = {
        type: "error",
        code: "network_error",
        message: `POST ${this.#urls.http} failed: ${error}`,
      };
    }
    if (!waited) {
      // A send(): the reply is not wanted; a failure goes where a WebSocket's would.
      if (frame?.type === "error" && this.state !== "closed") {
        this.#error(errorOf({...frame, message: `"${item.type}": ${frame.message}`}));
      }
      return;
    }
    if (this.#pending.get(item.id) !== item) return; // timed out or closed meanwhile
    this.#settle(item.id);
    if (frame?.type === "reply") item.resolve(frame.data);
    else if (frame?.type === "error") item.reject(errorOf(frame));
    else
      item.reject(
        new LiveError("bad_response", `expected a reply frame, got ${JSON.stringify(frame)}`),
      );
  }

  #settle(id) {
    const request = this.#pending.get(id);
    if (request) clearTimeout(request.timer);
    this.#pending.delete(id);
    if (request) this.#unqueue(request);
  }
}

/** The frame as JSON, or a TypeError saying why it cannot be sent. */
function encode(frame, verb) {
  if (typeof frame.type !== "string") {
    throw new TypeError(`live.js: ${verb}(type, data) takes a string type`);
  }
  try {
    return JSON.stringify(frame);
  } catch (error) {
    throw new TypeError(`live.js: ${verb}("${frame.type}", data): data is not JSON: ${error}`);
  }
}

/** A document id as the key of a version: a string (a number becomes one), else null. */
function idKey(id) {
  if (typeof id === "string") return id;
  return typeof id === "number" && Number.isFinite(id) ? String(id) : null;
}

function errorOf(frame) {
  return new LiveError(frame.code ?? "error", frame.message ?? JSON.stringify(frame), frame);
}

/** Call a page's callback; what it throws is reported, never breaks the client. */
function call(callback, ...args) {
  try {
    callback(...args);
  } catch (error) {
    report(error);
  }
}

function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}
