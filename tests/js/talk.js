// The talk's browser code, with no live.js at all: one plain WebSocket and an `if` on the
// message type. tests/test_live_js.py runs it in a page of the demo, with `updateUser`
// defined by the test, and checks that it still receives updated_user events.
// --8<-- [start:plain]
const socket = new WebSocket(
  `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/live`,
);
socket.onopen = () => socket.send(JSON.stringify({type: "subscribe", channel: "users"}));
socket.onmessage = (raw) => {
  const message = JSON.parse(raw.data);
  if (message.type == "updated_user") {
    updateUser(message.data.id, message.data);
  }
};
// --8<-- [end:plain]
