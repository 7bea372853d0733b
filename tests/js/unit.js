// live.js's logic against fake transports, run in a real Chromium by tests/test_live_js.py.
// Each check's outcome ("ok" or the error) goes to window.results, which the test reads.
import {backoffDelay, connect, endpoints, LiveError, reconnectHint} from "/static/live/live.js";

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
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({code, reason});
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

await check("a 1001 close with reconnect=<ms> waits that long, then recovers", async () => {
  equal(reconnectHint(1001, "reconnect=250"), 250, "parsed");
  equal(reconnectHint(1001, "bye; reconnect=7"), 7, "within a longer reason");
  equal(reconnectHint(1000, "reconnect=250"), null, "only for 1001");
  equal(reconnectHint(1001, "reconnect=soon"), null, "only digits");
  equal(reconnectHint(1001, undefined), null, "no reason");
  const {live, Socket, socket} = await opened({backoff: [1, 1]});
  socket.push({type: "subscribed", channel: "users", offset: 4, epoch: "e", id: socket.sent[0].id});
  socket.drop(1001, "reconnect=300");
  await pause(150);
  equal(Socket.instances.length, 1, "not before the hinted delay (the backoff is 1 ms)");
  await until(() => Socket.instances.length === 2, "a socket after the hint");
  const second = Socket.instances[1];
  second.open();
  equal([second.sent[0].since, second.sent[0].epoch], [4, "e"], "recovers with since");
  live.close();
});

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

await check("request over a WebSocket: replies by id, errors, timeout, disconnect", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {
    WebSocket: Socket,
    EventSource: null,
    timeout: 100,
    backoff: [1, 1],
  });
  const early = live.request("echo", "hi"); // before the socket is open: waits for it
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  equal(
    socket.sent.map((frame) => [frame.type, frame.data, typeof frame.id]),
    [["echo", "hi", "number"]],
    "sent on open, with an id",
  );
  const second = live.request("echo", {n: 2});
  socket.push({type: "reply", id: socket.sent[1].id, data: "two"});
  socket.push({type: "reply", id: socket.sent[0].id, data: "one"});
  equal([await early, await second], ["one", "two"], "matched by id");
  const refused = live.request("nope");
  socket.push({type: "error", code: "unknown_type", message: "no", id: socket.sent[2].id});
  const error = await refused.catch((error) => error);
  equal([error instanceof LiveError, error.code], [true, "unknown_type"], "error frame");
  const late = await live.request("slow").catch((error) => error.code);
  equal(late, "timeout", "no reply");
  const cut = live.request("cut");
  socket.drop();
  equal(await cut.catch((error) => error.code), "disconnected", "dropped before the reply");
  const typed = await live.request(7).catch((error) => error instanceof TypeError);
  equal(typed, true, "a type that is not a string: a rejected Promise");
  live.close();
  equal(await live.request("after").catch((error) => error.code), "closed", "after close()");
});

await check("send over a WebSocket: a frame without id, nothing waits", async () => {
  const Socket = fakeSockets();
  const errors = [];
  const live = connect("ws://example.test/live", {
    WebSocket: Socket,
    EventSource: null,
    timeout: 50,
    backoff: [1, 1],
    onError: (error) => errors.push(error.code),
  });
  equal(live.send("typing", 1), undefined, "returns nothing, before the socket is open");
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  equal(socket.sent, [{type: "typing", data: 1}], "queued, then sent on open, without id");
  equal(live.send("typing", 2), undefined, "returns nothing");
  equal(socket.sent[1], {type: "typing", data: 2}, "sent at once");
  const echoed = live.request("echo", 3); // a request in between still gets its own reply
  socket.push({type: "error", code: "unknown_type", message: "no"}); // a send's: no id
  equal(errors, ["unknown_type"], "the server's error for a send goes to onError");
  socket.push({type: "reply", data: "for nobody"}); // a reply without id: ignored
  socket.push({type: "reply", id: socket.sent[2].id, data: 3});
  equal(await echoed, 3, "the request's reply");
  for (const bad of [() => live.send(42), () => live.send("big", 1n)]) {
    let thrown = null;
    try {
      bad();
    } catch (error) {
      thrown = error;
    }
    equal(thrown instanceof TypeError, true, "a bad type or data throws at once");
  }
  socket.drop();
  live.send("late"); // no transport: it waits, at most options.timeout
  await pause(80);
  equal(errors, ["unknown_type", "timeout"], "given up after the timeout, and said so");
  await until(() => Socket.instances.length === 2, "a second socket");
  Socket.instances[1].open();
  equal(Socket.instances[1].sent, [], "a send given up on is never sent late");
  live.close();
  live.send("after");
  equal(errors, ["unknown_type", "timeout", "closed"], "after close()");
});

await check("position never moves backwards within an epoch", async () => {
  const {live, Socket, socket, seen} = await opened();
  equal(live.position("users"), null, "before subscribed");
  const {id} = socket.sent[0];
  socket.push({type: "subscribed", channel: "users", offset: 5, epoch: "e1", id});
  for (const offset of [6, 7, 6]) {
    socket.push({type: "updated_user", channel: "users", offset, data: {}});
  }
  equal(live.position("users"), {epoch: "e1", offset: 7}, "the last offset seen");
  socket.drop();
  await until(() => Socket.instances.length === 2, "a second socket");
  const second = Socket.instances[1];
  second.open();
  // A subscribed behind what was seen, in the same epoch (a lagging server): kept at 7.
  second.push({
    type: "subscribed",
    channel: "users",
    offset: 6,
    epoch: "e1",
    recovered: false,
    id: second.sent[0].id,
  });
  equal(live.position("users"), {epoch: "e1", offset: 7}, "not back to 6");
  second.push({type: "updated_user", channel: "users", offset: 7, data: {}});
  second.push({type: "updated_user", channel: "users", offset: 8, data: {}});
  await pause(0);
  equal(seen.events, [6, 7, 8], "7 not delivered twice");
  second.drop();
  await until(() => Socket.instances.length === 3, "a third socket");
  const third = Socket.instances[2];
  third.open();
  third.push({
    type: "subscribed",
    channel: "users",
    offset: 2,
    epoch: "e2",
    recovered: false,
    id: third.sent[0].id,
  });
  equal(live.position("users"), {epoch: "e2", offset: 2}, "a new epoch starts it again");
  live.position("users").offset = 99;
  equal(live.position("users").offset, 2, "position() is a copy");
  live.close();
});

await check("fallback to SSE: one EventSource per channel, the browser reconnects it", async () => {
  const Socket = fakeSockets({fail: true});
  const Source = fakeSources();
  const events = [];
  let refetches = 0;
  const live = connect("http://example.test/live", {
    WebSocket: Socket,
    EventSource: Source,
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
    "no position yet: the channel only",
  );
  a.push({type: "subscribed", channel: "users", offset: 3, epoch: "e"}, "e:3");
  equal(live.state, "live", "live");
  a.push({type: "created_user", channel: "users", offset: 4, data: {}}, "e:4");
  a.push({type: "created_user", channel: "users", offset: 5, data: {}}, "e:5");
  await pause(5);
  equal([Source.instances.length, a.readyState], [1, 1], "no second stream for the epoch");
  equal(events, [4, 5], "events");

  a.error(0); // the browser reconnects by itself, with Last-Event-ID: e:5
  equal([live.state, Source.instances.length], ["reconnecting", 1], "left to the browser");
  a.push({type: "created_user", channel: "users", offset: 5, data: {}}, "e:5"); // a repeat
  a.push({type: "created_user", channel: "users", offset: 6, data: {}}, "e:6");
  a.push({type: "subscribed", channel: "users", offset: 6, epoch: "e", recovered: true}, "e:6");
  await pause(5);
  equal([live.state, Source.instances.length], ["live", 1], "live again, the same stream");
  equal([events, refetches], [[4, 5, 6], 1], "recovered: once each, no refetch");
  equal(live.position("users"), {epoch: "e", offset: 6}, "position");

  a.error(2); // the browser gave up (an HTTP error): the client creates the stream again
  equal(a.readyState, 2, "the old one is closed");
  await until(() => Source.instances.length === 2, "a re-created stream");
  const b = Source.instances[1];
  equal(query(b.url), {channel: "users", since: "6", epoch: "e"}, "since and epoch in its URL");
  b.push({type: "created_user", channel: "users", offset: 7, data: {}}, "e:7");
  b.push({type: "subscribed", channel: "users", offset: 7, epoch: "e", recovered: true}, "e:7");
  await pause(5);
  equal([live.state, Source.instances.length, events], ["live", 2, [4, 5, 6, 7]], "recovered");

  b.error(0); // the server restarted meanwhile: its history is new
  b.push({type: "subscribed", channel: "users", offset: 1, epoch: "f", recovered: false}, "f:1");
  await pause(0);
  equal([refetches, live.position("users")], [2, {epoch: "f", offset: 1}], "refetch, new epoch");
  b.error(0);
  b.push({type: "subscribed", channel: "users", offset: 3, epoch: "f"}, "f:3"); // no Last-Event-ID
  b.push({type: "created_user", channel: "users", offset: 4, data: {}}, "f:4");
  await pause(0);
  equal([events, refetches], [[4, 5, 6, 7, 4], 3], "refetched after 2-3 were lost");
  b.error(2);
  await until(() => Source.instances.length === 3, "a stream created again");
  const c = Source.instances[2];
  equal(query(c.url), {channel: "users", since: "4", epoch: "f"}, "the URL follows the epoch");
  c.push({type: "subscribed", channel: "users", offset: 4, epoch: "f", recovered: true}, "f:4");

  const leave = live.subscribe("users/1"); // a second channel: a stream of its own
  equal(Source.instances.length, 4, "one more stream");
  const d = Source.instances[3];
  equal(query(d.url), {channel: "users/1"}, "its URL");
  d.push({type: "subscribed", channel: "users/1", offset: 0, epoch: "f"}, "f:0");
  await pause(5);
  const open = Source.instances.filter((source) => source.readyState !== 2);
  equal([open.length, live.state], [2, "live"], "one open EventSource per channel");
  leave();
  equal(d.readyState, 2, "leaving a channel closes its stream");
  live.close();
  equal(c.readyState, 2, "close() closes the streams");
});

await check("request and send over SSE: JSON POSTs; send waits for nothing", async () => {
  const Source = fakeSources();
  const calls = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      calls.push({url, init, frame: JSON.parse(init.body), resolve, reject});
    });
  const answer = (status, frame) => ({status, json: async () => frame});
  const errors = [];
  const live = connect("http://example.test/live", {
    WebSocket: undefined,
    EventSource: Source,
    fetch,
    backoff: [1, 2],
    onError: (error) => errors.push(error.code),
  });
  live.subscribe("users");
  await until(() => Source.instances.length === 1, "an event stream");
  Source.instances[0].push({type: "subscribed", channel: "users", offset: 0, epoch: "e"}, "e:0");
  equal(live.state, "live", "live");

  equal(live.send("typing", {n: 1}), undefined, "send() returns nothing");
  equal(calls.length, 1, "and POSTs at once");
  const typing = calls[0];
  equal(
    [typing.url, typing.init.method, typing.init.headers["Content-Type"], typing.frame],
    ["http://example.test/live", "POST", "application/json", {type: "typing", data: {n: 1}}],
    "the frame, without id, as JSON",
  );
  const doubled = live.request("double", 21);
  const double = calls[1];
  equal(
    [double.init.headers["Content-Type"], double.frame.type, double.frame.data],
    ["application/json", "double", 21],
    "request() POSTs its frame",
  );
  equal(typeof double.frame.id, "number", "with an id");
  double.resolve(answer(200, {type: "reply", id: double.frame.id, data: 42}));
  equal(await doubled, 42, "resolves with the reply's data");
  typing.resolve(answer(200, {type: "reply", data: null})); // nobody waits for it

  const refused = live.request("nope");
  calls[2].resolve(answer(404, {type: "error", code: "unknown_type", message: "no"}));
  const error = await refused.catch((error) => error);
  equal([error instanceof LiveError, error.code], [true, "unknown_type"], "rejects: error frame");
  const lost = live.request("lost");
  calls[3].reject(new TypeError("Failed to fetch"));
  equal(await lost.catch((error) => error.code), "network_error", "rejects: network error");

  live.send("nope");
  calls[4].resolve(answer(404, {type: "error", code: "unknown_type", message: "no"}));
  await until(() => errors.length === 1, "onError");
  live.send("lost");
  calls[5].reject(new TypeError("Failed to fetch"));
  await until(() => errors.length === 2, "onError again");
  equal(errors, ["unknown_type", "network_error"], "a send's failures go to onError");
  live.close();
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

// -- snapshot channels -------------------------------------------------------------------------

/** A live client on fake sockets with one snapshot subscription to "users", recorded. */
async function snapshotted(options = {}) {
  const Socket = fakeSockets();
  const seen = {events: [], typed: [], snapshots: []};
  const live = connect("ws://example.test/live", {
    WebSocket: Socket,
    EventSource: null,
    backoff: [1, 2],
    ...options,
  });
  const record = (event) => seen.events.push([event.offset, event.data.id, event.version]);
  live.subscribe("users", record, {
    onSnapshot: (docs, {more}) => {
      seen.snapshots.push([docs.map((doc) => doc.id), more]);
    },
  });
  live.on("updated_user", (event) => seen.typed.push([event.data.id, event.version]));
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  return {live, Socket, socket, seen};
}

const item = (id, version, fields = {}) => ({version, data: {id, ...fields}});
const model = (type, offset, id, version) => ({
  type,
  channel: "users",
  offset,
  version,
  data: {id},
});

await check("snapshot: asked for, delivered; events not newer than it are dropped", async () => {
  const {live, socket, seen} = await snapshotted();
  const first = socket.sent[0];
  equal(
    [first.type, first.channel, first.snapshot, "since" in first],
    ["subscribe", "users", true, false],
    "the subscribe asks for a snapshot",
  );
  socket.push({
    type: "subscribed",
    channel: "users",
    offset: 5,
    epoch: "e",
    snapshot: [item("a", 3, {name: "Ada"}), item("b", 1)],
    more: false,
    id: first.id,
  });
  equal(seen.snapshots, [[["a", "b"], false]], "onSnapshot(docs, {more}), in the server's order");
  equal(live.state, "live", "live");
  equal(
    [live.version("users", "a"), live.version("users", "b"), live.version("users", "c")],
    [3, 1, null],
    "version() is the snapshot's",
  );
  await pause(0);
  socket.push(model("updated_user", 6, "a", 2)); // older than the snapshot: dropped
  socket.push(model("updated_user", 7, "a", 3)); // the snapshot shows it already: dropped
  socket.push(model("updated_user", 8, "a", 4));
  socket.push(model("updated_user", 9, "b", 2));
  socket.push(model("created_user", 10, "c", 1));
  socket.push({type: "notice", channel: "users", offset: 11, data: {id: "a"}}); // no version
  equal(
    seen.events,
    [
      [8, "a", 4],
      [9, "b", 2],
      [10, "c", 1],
      [11, "a", undefined],
    ],
    "only newer events, and those without a version",
  );
  equal(
    seen.typed,
    [
      ["a", 4],
      ["b", 2],
    ],
    "on() listeners get the same",
  );
  equal([live.version("users", "a"), live.version("users", "c")], [4, 1], "version() follows");
  socket.push(model("deleted_user", 12, "a", 5));
  equal(live.version("users", "a"), null, "deleted: forgotten");
  socket.push(model("created_user", 13, "a", 1)); // made again with the same id
  socket.push(model("updated_user", 14, "a", 1)); // a repeat of that version: dropped
  socket.push(model("updated_user", 15, "a", 2));
  equal(
    seen.events.slice(4).map(([offset]) => offset),
    [12, 13, 15],
    "a document made again starts over at version 1",
  );
  equal(live.position("users"), {epoch: "e", offset: 15}, "every offset counts");
  live.subscribe("others", null);
  equal(live.version("others", "a"), null, "no versions on a channel without onSnapshot");
  equal("snapshot" in socket.sent[1], false, "which asks for no snapshot");
  live.close();
});

await check("snapshot: over SSE the URL asks for it, after a re-creation too", async () => {
  const Source = fakeSources();
  const snapshots = [];
  const events = [];
  const live = connect("http://example.test/live", {
    WebSocket: undefined,
    EventSource: Source,
    backoff: [1, 2],
  });
  live.subscribe("users", (event) => events.push(event.offset), {
    onSnapshot: (docs) => {
      snapshots.push(docs.map((doc) => doc.id));
    },
  });
  await until(() => Source.instances.length === 1, "an event stream");
  const [a] = Source.instances;
  equal(query(a.url), {channel: "users", snapshot: "1"}, "&snapshot=1");
  a.push(
    {type: "subscribed", channel: "users", offset: 3, epoch: "e", snapshot: [item("x", 2)]},
    "e:3",
  );
  equal([snapshots, live.state], [[["x"]], "live"], "delivered");
  a.push(model("updated_user", 4, "x", 2), "e:4");
  a.push(model("updated_user", 5, "x", 3), "e:5");
  await pause(0);
  equal(events, [5], "version 2 was in the snapshot");
  a.error(2); // the browser gave up: a new stream from the position, still asking
  await until(() => Source.instances.length === 2, "a re-created stream");
  const b = Source.instances[1];
  equal(
    query(b.url),
    {channel: "users", since: "5", epoch: "e", snapshot: "1"},
    "since, epoch and snapshot",
  );
  b.push({type: "subscribed", channel: "users", offset: 5, epoch: "e", recovered: true}, "e:5");
  equal(snapshots.length, 1, "recovered: no snapshot");
  b.error(0); // the browser reconnects with Last-Event-ID; the server restarted meanwhile
  b.push(
    {
      type: "subscribed",
      channel: "users",
      offset: 1,
      epoch: "f",
      recovered: false,
      snapshot: [item("x", 3), item("y", 1)],
    },
    "f:1",
  );
  equal(snapshots, [["x"], ["x", "y"]], "recovered: false comes with a new snapshot");
  equal(live.position("users"), {epoch: "f", offset: 1}, "its position");
  live.close();
});

await check("snapshot: a new one when recovery fails, and after a gap", async () => {
  const {live, Socket, socket, seen} = await snapshotted();
  socket.push({
    type: "subscribed",
    channel: "users",
    offset: 5,
    epoch: "e",
    snapshot: [item("a", 1)],
    id: socket.sent[0].id,
  });
  socket.drop();
  await until(() => Socket.instances.length === 2, "a second socket");
  const second = Socket.instances[1];
  second.open();
  const again = second.sent[0];
  equal([again.since, again.epoch, again.snapshot], [5, "e", true], "since, epoch, snapshot");
  second.push({
    type: "subscribed",
    channel: "users",
    offset: 2,
    epoch: "f",
    recovered: false,
    snapshot: [item("a", 2), item("b", 1)],
    id: again.id,
  });
  equal(seen.snapshots.length, 2, "recovered: false: a new snapshot");
  equal(live.position("users"), {epoch: "f", offset: 2}, "position");
  await pause(0);

  // A gap (3 lost): subscribe again from 2; the server replays 3 and more.
  second.push(model("updated_user", 4, "a", 4));
  equal(second.sent.length, 2, "subscribed again");
  const resync = second.sent[1];
  equal(
    [resync.since, resync.epoch, resync.snapshot, seen.events],
    [2, "f", true, []],
    "from the offset before the gap; nothing delivered meanwhile",
  );
  const notice = {type: "notice", channel: "users", offset: 5, data: {}}; // no version
  second.push(notice); // the old subscription's, after the gap
  second.push(model("updated_user", 3, "a", 3)); // the replay
  second.push(model("updated_user", 4, "a", 4));
  second.push(notice);
  second.push({
    type: "subscribed",
    channel: "users",
    offset: 5,
    epoch: "f",
    recovered: true,
    id: resync.id,
  });
  second.push(model("updated_user", 6, "a", 5));
  await pause(0);
  equal(
    seen.events.map(([offset]) => offset),
    [3, 4, 5, 6],
    "recovered: every event once, in order",
  );
  equal(seen.snapshots.length, 2, "and no snapshot");

  // Another gap, and this time the server no longer has the events: a snapshot.
  second.push(model("updated_user", 9, "a", 8));
  const third = second.sent[2];
  equal([third.since, third.snapshot], [6, true], "subscribed again");
  second.push(model("updated_user", 10, "a", 9)); // superseded by the snapshot
  second.push({
    type: "subscribed",
    channel: "users",
    offset: 10,
    epoch: "f",
    recovered: false,
    snapshot: [item("a", 9)],
    id: third.id,
  });
  second.push(model("updated_user", 11, "a", 9)); // shown by the snapshot already
  second.push(model("updated_user", 12, "a", 10));
  await pause(0);
  equal(seen.snapshots.length, 3, "a new snapshot");
  equal(seen.events.map(([offset]) => offset), [3, 4, 5, 6, 12], "then what is newer");
  equal(
    [live.position("users"), live.version("users", "a"), live.version("users", "b")],
    [{epoch: "f", offset: 12}, 10, null],
    "position and versions",
  );

  // A stale subscribed (answering a superseded frame) is ignored; and a recovered: false
  // without a snapshot (a server that sends none then) makes it ask for one.
  second.drop();
  await until(() => Socket.instances.length === 3, "a third socket");
  const fourth = Socket.instances[2];
  fourth.open();
  const asked = fourth.sent[0];
  fourth.push({
    type: "subscribed",
    channel: "users",
    offset: 1,
    epoch: "g",
    recovered: false,
    id: asked.id,
  });
  const fresh = fourth.sent[1];
  equal([fresh.snapshot, "since" in fresh], [true, false], "a new snapshot asked, no since");
  fourth.push({
    type: "subscribed",
    channel: "users",
    offset: 1,
    epoch: "g",
    recovered: false,
    snapshot: [item("stale", 1)],
    id: asked.id,
  });
  equal(seen.snapshots.length, 3, "the answer to the superseded frame is ignored");
  fourth.push({
    type: "subscribed",
    channel: "users",
    offset: 1,
    epoch: "g",
    snapshot: [],
    id: fresh.id,
  });
  equal(seen.snapshots.length, 4, "delivered");
  live.close();
});

await check("snapshot: a pending onSnapshot holds events; a newer one supersedes", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {
    WebSocket: Socket,
    EventSource: null,
    backoff: [1, 2],
  });
  const events = [];
  const typed = [];
  const finish = [];
  const shown = [];
  live.subscribe("users", (event) => events.push(event.offset), {
    onSnapshot: (docs) =>
      new Promise((resolve) => {
        shown.push(docs.map((doc) => doc.id));
        finish.push(resolve);
      }),
  });
  live.on("created_user", (event) => typed.push(event.offset));
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  socket.push({
    type: "subscribed",
    channel: "users",
    offset: 0,
    epoch: "e",
    snapshot: [],
    id: socket.sent[0].id,
  });
  socket.push(model("created_user", 1, "a", 1));
  socket.push(model("created_user", 2, "b", 1));
  await pause(5);
  equal([events, typed, live.version("users", "a")], [[], [], null], "held while it runs");
  finish[0]();
  await pause(0);
  equal([events, typed, live.version("users", "a")], [[1, 2], [1, 2], 1], "then in order");

  socket.push(model("created_user", 3, "c", 1)); // delivered: nothing pending
  socket.drop();
  await until(() => Socket.instances.length === 2, "a second socket");
  const second = Socket.instances[1];
  second.open();
  second.push({
    type: "subscribed",
    channel: "users",
    offset: 0,
    epoch: "f",
    recovered: false,
    snapshot: [item("a", 1)],
    id: second.sent[0].id,
  });
  second.push(model("created_user", 1, "d", 1)); // held behind the new snapshot
  second.drop();
  await until(() => Socket.instances.length === 3, "a third socket");
  const third = Socket.instances[2];
  third.open();
  third.push({
    type: "subscribed",
    channel: "users",
    offset: 1,
    epoch: "g",
    recovered: false,
    snapshot: [item("a", 1), item("d", 1)],
    id: third.sent[0].id,
  });
  await pause(5);
  equal(shown, [[], ["a"]], "one onSnapshot at a time: the third waits");
  finish[1]();
  await pause(0);
  equal(shown, [[], ["a"], ["a", "d"]], "then the newest snapshot");
  third.push(model("created_user", 2, "e", 1));
  finish[2]();
  await pause(0);
  equal(events, [1, 2, 3, 2], "the event the newest snapshot shows was never delivered");
  live.close();
});

await check("snapshot: no_snapshot goes to onError; onSnapshot excludes onRefetch", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {WebSocket: Socket, EventSource: null});
  const errors = [];
  live.subscribe("plain", null, {
    onSnapshot: () => {},
    onError: (error) => errors.push([error instanceof LiveError, error.code]),
  });
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  socket.push({
    type: "error",
    code: "no_snapshot",
    message: "'plain' has no snapshot",
    channel: "plain",
    id: socket.sent[0].id,
  });
  equal([errors, live.state], [[[true, "no_snapshot"]], "live"], "onError, and live");
  const thrown = [];
  for (const attempt of [
    () => live.subscribe("users", null, {onSnapshot: () => {}, onRefetch: () => {}}),
    () => live.subscribe("users", null, {onSnapshot: "no"}),
    () => live.subscribe("plain", null, {onRefetch: () => {}}),
  ]) {
    try {
      attempt();
      thrown.push(null);
    } catch (error) {
      thrown.push(error instanceof TypeError);
    }
  }
  live.subscribe("refetched", null, {onRefetch: () => {}});
  try {
    live.subscribe("refetched", null, {onSnapshot: () => {}});
    thrown.push(null);
  } catch (error) {
    thrown.push(error instanceof TypeError);
  }
  equal(thrown, [true, true, true, true], "TypeErrors");
  live.close();

  // Over SSE, the stream's refusal (HTTP 400 with the error frame).
  const Source = fakeSources();
  const fetch = async () => ({
    status: 400,
    json: async () => ({type: "error", code: "no_snapshot", message: "none"}),
  });
  const sse = connect("/live", {WebSocket: undefined, EventSource: Source, fetch});
  const refused = [];
  sse.subscribe("plain", null, {
    onSnapshot: () => {},
    onError: (error) => refused.push(error.code),
  });
  await until(() => Source.instances.length === 1, "an event stream");
  Source.instances[0].error(2);
  await until(() => refused.length === 1, "onError over SSE");
  equal(refused, ["no_snapshot"], "over SSE");
  sse.close();
});

await check("snapshot: another onSnapshot, or a refetch_ event, asks for a new one", async () => {
  const {live, socket, seen} = await snapshotted();
  const early = [];
  // Before the first answer: it shares the snapshot already asked for.
  live.subscribe("users", null, {onSnapshot: (docs) => early.push(docs.length)});
  equal(socket.sent.length, 1, "no second frame");
  socket.push({
    type: "subscribed",
    channel: "users",
    offset: 4,
    epoch: "e",
    snapshot: [item("a", 1)],
    id: socket.sent[0].id,
  });
  equal([seen.snapshots.length, early], [1, [1]], "both got it");
  await pause(0);
  socket.push(model("updated_user", 5, "a", 2));
  const late = [];
  live.subscribe("users", null, {onSnapshot: (docs) => late.push(docs.length)});
  const asked = socket.sent[1];
  equal([asked.snapshot, "since" in asked], [true, false], "a later one: a new snapshot");
  socket.push(model("updated_user", 6, "a", 3)); // still delivered meanwhile
  socket.push({
    type: "subscribed",
    channel: "users",
    offset: 8,
    epoch: "e",
    snapshot: [item("a", 5), item("b", 1)],
    id: asked.id,
  });
  equal([seen.snapshots.length, early, late], [2, [1, 2], [2]], "every onSnapshot gets it");
  await pause(0);
  socket.push({type: "refetch_user", channel: "users", offset: 9, data: {reason: "many"}});
  equal(seen.events.map(([offset]) => offset), [5, 6, 9], "the refetch_ event is delivered");
  const again = socket.sent[2];
  equal([again.snapshot, "since" in again], [true, false], "and a new snapshot asked");
  live.close();
});

await check("a revoked channel goes to its onError, and nothing more of it arrives", async () => {
  const Socket = fakeSockets();
  const live = connect("ws://example.test/live", {WebSocket: Socket, EventSource: null});
  const errors = [];
  const events = [];
  live.subscribe("tasks/1", (event) => events.push(event.offset), {
    onError: (error) => errors.push(error.code),
  });
  await until(() => Socket.instances.length === 1, "a socket");
  const socket = Socket.instances[0];
  socket.open();
  const id = socket.sent[0].id;
  socket.push({type: "subscribed", channel: "tasks/1", offset: 0, epoch: "e", id});
  socket.push({type: "updated_task", channel: "tasks/1", offset: 1, data: {id: "1"}});
  await pause(0);
  socket.push({type: "error", code: "revoked", message: "no longer", channel: "tasks/1"});
  socket.push({type: "updated_task", channel: "tasks/1", offset: 2, data: {id: "1"}});
  equal([errors, events], [["revoked"], [1]], "told once, nothing after it");
  equal(live.state, "live", "the connection stays");
  live.close();
});

window.results = results;
