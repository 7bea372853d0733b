// live.js's logic against fake transports, run in a real Chromium by tests/test_live_js.py.
// Each check's outcome ("ok" or the error) goes to window.results, which the test reads.
import {backoffDelay, connect, endpoints, LiveError} from "/static/live/live.js";

const results = {};

async function check(name, body) {
  try {
    await body();
    results[name] = "ok";
  } catch (error) {
    results[name] = String(error?.stack ?? error);
  }
}

function equal(actual, expected, what = "") {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, what, ms = 3000) {
  const end = performance.now() + ms;
  while (!predicate()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await pause(2);
  }
}

/** A WebSocket class whose instances the check opens, feeds and drops by hand. */
function fakeSockets({fail = false} = {}) {
  return class FakeSocket {
    static instances = [];
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      FakeSocket.instances.push(this);
      if (fail) setTimeout(() => this.drop(), 1);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    push(frame) {
      this.onmessage?.({data: JSON.stringify(frame)});
    }
    drop() {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({code: 1006});
    }
  };
}

/** An EventSource class, likewise. */
function fakeSources() {
  return class FakeSource {
    static instances = [];
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      FakeSource.instances.push(this);
    }
    close() {
      this.readyState = 2;
    }
    push(frame, id = "") {
      this.readyState = 1;
      this.onmessage?.({data: JSON.stringify(frame), lastEventId: id});
    }
    error(readyState) {
      this.readyState = readyState;
      this.onerror?.({});
    }
  };
}

function query(url) {
  return Object.fromEntries(new URL(url).searchParams);
}

/** A live client on fake sockets, with one "users" subscription recorded. */
async function opened(options = {}) {
  const Socket = fakeSockets();
  const seen = {events: [], refetches: 0, states: []};
  const live = connect("ws://example.test/live", {
    WebSocket: Socket,
    EventSource: null,
    backoff: [1, 2],
    onState: (state) => seen.states.push(state),
    ...options,
  });
  live.subscribe("users", (event) => seen.events.push(event.offset), {
    onRefetch: () => {
      seen.refetches += 1;
    },
  });
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  return {live, Socket, socket, seen};
}

await check("backoff is capped, exponential and jittered", () => {
  equal(
    backoffDelay(0, [500, 10000], () => 0),
    250,
    "attempt 0, least",
  );
  equal(
    backoffDelay(0, [500, 10000], () => 1),
    500,
    "attempt 0, most",
  );
  equal(
    backoffDelay(3, [500, 10000], () => 0),
    2000,
    "attempt 3",
  );
  equal(
    backoffDelay(10, [500, 10000], () => 0),
    5000,
    "capped, least",
  );
  equal(
    backoffDelay(10, [500, 10000], () => 1),
    10000,
    "capped, most",
  );
  for (let attempt = 0; attempt < 20; attempt++) {
    const delay = backoffDelay(attempt);
    const ceiling = Math.min(10000, 500 * 2 ** attempt);
    if (!(delay >= ceiling / 2 && delay <= ceiling))
      throw new Error(`attempt ${attempt}: ${delay}`);
  }
});

await check("endpoints derive ws and http URLs", () => {
  equal(
    endpoints("/live", "https://a.example/x/y"),
    {ws: "wss://a.example/live", http: "https://a.example/live"},
    "relative, https",
  );
  equal(
    endpoints("ws://h.example:81/live?token=t#x"),
    {ws: "ws://h.example:81/live?token=t", http: "http://h.example:81/live?token=t"},
    "ws",
  );
  equal(
    endpoints("live", "http://h.example/app/"),
    {ws: "ws://h.example/app/live", http: "http://h.example/app/live"},
    "relative path",
  );
  let refused = null;
  try {
    endpoints("ftp://h.example/live");
  } catch (error) {
    refused = error;
  }
  equal(refused instanceof TypeError, true, "ftp is refused");
});

await check(
  "offsets: drop repeats, resubscribe with since and epoch, refetch when lost",
  async () => {
    const {live, Socket, socket, seen} = await opened();
    const first = socket.sent[0];
    equal([first.type, first.channel, "since" in first], ["subscribe", "users", false], "first");
    equal(live.state, "connecting", "before subscribed");
    socket.push({type: "subscribed", channel: "users", offset: 5, epoch: "e1", id: first.id});
    equal(live.state, "live", "after subscribed");
    await pause(0);
    equal(seen.refetches, 1, "the first subscription refetches");
    for (const offset of [6, 7, 7, 5]) {
      socket.push({type: "updated_user", channel: "users", offset, data: {}});
    }
    socket.push({type: "updated_user", channel: "elsewhere", offset: 8, data: {}});
    equal(seen.events, [6, 7], "repeats and older offsets are dropped");

    socket.drop();
    equal(live.state, "reconnecting", "dropped");
    await until(() => Socket.instances.length === 2, "a second socket");
    const second = Socket.instances[1];
    second.open();
    const again = second.sent[0];
    equal([again.since, again.epoch], [7, "e1"], "resubscribed from the last offset");
    second.push({type: "updated_user", channel: "users", offset: 7, data: {}});
    second.push({type: "updated_user", channel: "users", offset: 8, data: {}});
    second.push({
      type: "subscribed",
      channel: "users",
      offset: 8,
      epoch: "e1",
      recovered: true,
      id: again.id,
    });
    await pause(0);
    equal(seen.events, [6, 7, 8], "recovered, once");
    equal(seen.refetches, 1, "no refetch when recovered");

    second.drop();
    await until(() => Socket.instances.length === 3, "a third socket");
    const third = Socket.instances[2];
    third.open();
    equal([third.sent[0].since, third.sent[0].epoch], [8, "e1"], "resubscribed again");
    third.push({
      type: "subscribed",
      channel: "users",
      offset: 2,
      epoch: "e2",
      recovered: false,
      id: third.sent[0].id,
    });
    await pause(0);
    equal(seen.refetches, 2, "refetch when the server could not recover");
    third.push({type: "created_user", channel: "users", offset: 3, data: {}});
    equal(seen.events, [6, 7, 8, 3], "the new epoch's offsets count from its subscribed");
    third.push({type: "created_user", channel: "users", offset: 5, data: {}});
    await pause(0);
    equal(seen.refetches, 3, "a gap (4 lost) refetches");
    equal(seen.events, [6, 7, 8, 3, 5], "and the event after it still comes");
    live.close();
    equal(
      seen.states,
      ["live", "reconnecting", "live", "reconnecting", "live", "closed"],
      "states",
    );
    equal(third.readyState, 3, "close() closes the socket");
  },
);

await check("events wait for a pending onRefetch, then come in order", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {WebSocket: Socket, EventSource: null});
  const events = [];
  let finish;
  live.subscribe("users", (event) => events.push(event.offset), {
    onRefetch: () =>
      new Promise((resolve) => {
        finish = resolve;
      }),
  });
  const typed = [];
  live.on("created_user", (event) => typed.push(event.offset));
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  socket.push({type: "subscribed", channel: "users", offset: 0, epoch: "e", id: socket.sent[0].id});
  socket.push({type: "created_user", channel: "users", offset: 1, data: {}});
  socket.push({type: "created_user", channel: "users", offset: 2, data: {}});
  await pause(5);
  equal([events, typed], [[], []], "held while the refetch runs");
  finish();
  await pause(0);
  equal(
    [events, typed],
    [
      [1, 2],
      [1, 2],
    ],
    "delivered after it",
  );
  live.close();
});

await check("subscribers share a channel; on(type) spans channels", async () => {
  const {live, socket, seen} = await opened();
  socket.push({type: "subscribed", channel: "users", offset: 0, epoch: "e", id: socket.sent[0].id});
  let refetched = 0;
  const other = [];
  const leave = live.subscribe("users", (event) => other.push(event.offset), {
    onRefetch: () => {
      refetched += 1;
    },
  });
  await pause(0);
  equal([refetched, seen.refetches, socket.sent.length], [1, 1, 1], "its own refetch, no frame");
  live.subscribe("users/1", null);
  const one = socket.sent[1];
  equal([one.type, one.channel], ["subscribe", "users/1"], "second channel");
  socket.push({type: "subscribed", channel: "users/1", offset: 0, epoch: "e", id: one.id});
  await pause(0);
  const updated = [];
  const off = live.on("updated_user", (event) => updated.push(event.channel));
  socket.push({type: "updated_user", channel: "users", offset: 1, data: {id: "1"}});
  socket.push({type: "updated_user", channel: "users/1", offset: 1, data: {id: "1"}});
  socket.push({type: "deleted_user", channel: "users", offset: 2, data: {id: "1"}});
  off();
  socket.push({type: "updated_user", channel: "users", offset: 3, data: {id: "1"}});
  await pause(0);
  equal(updated, ["users", "users/1"], "on() gets the type on every channel");
  equal(
    [seen.events, other],
    [
      [1, 2, 3],
      [1, 2, 3],
    ],
    "both subscribers",
  );
  leave();
  equal(socket.sent.length, 2, "not the last subscriber: nothing sent");
  live.close();
});

await check("a refused channel goes to onError; the client is live anyway", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {WebSocket: Socket, EventSource: null});
  const errors = [];
  live.subscribe("admin", null, {
    onError: (error) => errors.push([error instanceof LiveError, error.code]),
  });
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  socket.push({
    type: "error",
    code: "forbidden",
    message: "no",
    channel: "admin",
    id: socket.sent[0].id,
  });
  equal(errors, [[true, "forbidden"]], "onError");
  live.subscribe("bad/", null, {
    onError: (error) => errors.push([error instanceof LiveError, error.code]),
  });
  // invalid_channel errors carry the subscribe's id but no channel
  socket.push({type: "error", code: "invalid_channel", message: "no", id: socket.sent[1].id});
  equal(
    errors,
    [
      [true, "forbidden"],
      [true, "invalid_channel"],
    ],
    "matched by id",
  );
  equal(live.state, "live", "state");
  live.close();
});

await check("send over a WebSocket: replies by id, errors, timeout, disconnect", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {
    WebSocket: Socket,
    EventSource: null,
    timeout: 100,
    backoff: [1, 1],
  });
  const early = live.send("echo", "hi"); // before the socket is open: waits for it
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  equal(
    socket.sent.map((frame) => [frame.type, frame.data]),
    [["echo", "hi"]],
    "sent on open",
  );
  const second = live.send("echo", {n: 2});
  socket.push({type: "reply", id: socket.sent[1].id, data: "two"});
  socket.push({type: "reply", id: socket.sent[0].id, data: "one"});
  equal([await early, await second], ["one", "two"], "matched by id");
  const refused = live.send("nope");
  socket.push({type: "error", code: "unknown_type", message: "no", id: socket.sent[2].id});
  const error = await refused.catch((error) => error);
  equal([error instanceof LiveError, error.code], [true, "unknown_type"], "error frame");
  const late = await live.send("slow").catch((error) => error.code);
  equal(late, "timeout", "no reply");
  const cut = live.send("cut");
  socket.drop();
  equal(await cut.catch((error) => error.code), "disconnected", "dropped before the reply");
  live.close();
  equal(await live.send("after").catch((error) => error.code), "closed", "after close()");
});

await check("fallback to SSE: hand over to an epoch-only stream, reconnects, POST", async () => {
  const Socket = fakeSockets({fail: true});
  const Source = fakeSources();
  const posts = [];
  const fetch = async (url, init) => {
    posts.push([url, init.method, JSON.parse(init.body)]);
    const frame = JSON.parse(init.body);
    return {status: 200, json: async () => ({type: "reply", id: frame.id, data: frame.data * 2})};
  };
  const events = [];
  let refetches = 0;
  const live = connect("http://example.test/live", {
    WebSocket: Socket,
    EventSource: Source,
    fetch,
    backoff: [1, 2],
  });
  live.subscribe("users", (event) => events.push(event.offset), {
    onRefetch: () => {
      refetches += 1;
    },
  });
  await until(() => Source.instances.length === 1, "an event stream");
  equal(Socket.instances.length, 2, "the WebSocket was tried twice");
  equal(live.transport, "sse", "transport");
  const [a] = Source.instances;
  equal(
    [a.url.split("?")[0], query(a.url)],
    ["http://example.test/live", {channel: "users"}],
    "first URL",
  );
  a.push({type: "subscribed", channel: "users", offset: 3, epoch: "e"}, "3");
  equal(live.state, "live", "live");
  equal(Source.instances.length, 2, "a second stream");
  const b = Source.instances[1];
  equal(query(b.url), {channel: "users", epoch: "e"}, "with the epoch, without since");
  b.push({type: "subscribed", channel: "users", offset: 5, epoch: "e"}, "5");
  b.push({type: "created_user", channel: "users", offset: 6, data: {}}, "6");
  equal(a.readyState, 1, "the first stream stays until it delivered 4 and 5");
  a.push({type: "created_user", channel: "users", offset: 4, data: {}}, "4");
  equal(a.readyState, 1, "still");
  a.push({type: "created_user", channel: "users", offset: 5, data: {}}, "5");
  equal(a.readyState, 2, "then it is closed");
  await pause(0);
  equal(events, [4, 5, 6], "every event once, in order, across the two streams");

  b.error(0); // the browser reconnects by itself (Last-Event-ID: 6)
  equal([live.state, Source.instances.length], ["reconnecting", 2], "left to the browser");
  b.push({type: "created_user", channel: "users", offset: 7, data: {}}, "7");
  b.push({type: "subscribed", channel: "users", offset: 7, epoch: "e", recovered: true}, "7");
  equal([live.state, Source.instances.length], ["live", 2], "live again, same stream");

  b.error(2); // the browser gave up (an HTTP error): the client reopens it, then hands over
  await until(() => Source.instances.length === 3, "a reopened stream");
  const c = Source.instances[2];
  equal(query(c.url), {channel: "users", since: "7", epoch: "e"}, "recovering from 7");
  c.push({type: "subscribed", channel: "users", offset: 7, epoch: "e", recovered: true}, "7");
  const d = Source.instances[3];
  equal(query(d.url), {channel: "users", epoch: "e"}, "handed over again");
  d.push({type: "subscribed", channel: "users", offset: 7, epoch: "e"}, "7");
  equal([c.readyState, d.readyState], [2, 1], "at once: nothing to wait for");

  d.error(0); // the server restarted: its history is new
  d.push({type: "subscribed", channel: "users", offset: 1, epoch: "f", recovered: false}, "1");
  const f = Source.instances[4];
  equal(query(f.url), {channel: "users", epoch: "f"}, "the URL's epoch follows the server's");
  f.push({type: "subscribed", channel: "users", offset: 1, epoch: "f"}, "1");
  f.error(0);
  f.push({type: "subscribed", channel: "users", offset: 3, epoch: "f"}, "3"); // no Last-Event-ID
  f.push({type: "created_user", channel: "users", offset: 4, data: {}}, "4");
  await pause(0);
  equal(
    [events, refetches],
    [[4, 5, 6, 7, 4], 3],
    "refetched on load, after the reset, after 2-3 were lost",
  );
  equal(Source.instances.length, 5, "no other stream");

  equal(await live.send("double", 21), 42, "send() over SSE");
  equal(
    posts,
    [["http://example.test/live", "POST", {type: "double", id: posts[0][2].id, data: 21}]],
    "a POST",
  );
  live.close();
  equal(f.readyState, 2, "close() closes the streams");
});

await check("no WebSocket constructor: SSE at once", async () => {
  const Source = fakeSources();
  const live = connect("/live", {WebSocket: undefined, EventSource: Source});
  live.subscribe("users");
  await until(() => Source.instances.length === 1, "an event stream");
  equal(new URL(Source.instances[0].url).pathname, "/live", "same route");
  live.close();
});

await check("a channel refused over SSE (HTTP 403) goes to onError", async () => {
  const Source = fakeSources();
  const fetch = async () => ({
    status: 403,
    json: async () => ({type: "error", code: "forbidden", message: "no"}),
  });
  const live = connect("/live", {
    WebSocket: undefined,
    EventSource: Source,
    fetch,
    backoff: [1, 2],
  });
  const errors = [];
  live.subscribe("admin", null, {onError: (error) => errors.push(error.code)});
  await until(() => Source.instances.length === 1, "an event stream");
  Source.instances[0].error(2);
  await until(() => errors.length === 1, "onError");
  equal(errors, ["forbidden"], "code");
  await pause(20);
  equal([Source.instances.length, live.state], [1, "live"], "not retried");
  live.close();
});

await check("server down at first: SSE fails too, so back to the WebSocket", async () => {
  const Socket = fakeSockets();
  const Source = fakeSources();
  const fetch = async () => {
    throw new TypeError("Failed to fetch");
  };
  const live = connect("/live", {WebSocket: Socket, EventSource: Source, fetch, backoff: [1, 2]});
  live.subscribe("users");
  await until(() => Socket.instances.length === 1, "a socket");
  Socket.instances[0].drop();
  await until(() => Socket.instances.length === 2, "a second socket");
  Socket.instances[1].drop();
  await until(() => Source.instances.length === 1, "an event stream");
  Source.instances[0].error(0); // a network error
  await until(() => Socket.instances.length === 3, "the WebSocket again");
  equal(live.state, "connecting", "never live yet");
  const socket = Socket.instances[2];
  socket.open();
  socket.push({type: "subscribed", channel: "users", offset: 0, epoch: "e", id: socket.sent[0].id});
  equal(
    [live.state, live.transport, Source.instances.length],
    ["live", "websocket", 1],
    "on WebSocket",
  );
  live.close();
});

window.results = results;
