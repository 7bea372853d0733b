// The team board's page: the team's tasks, live over live.js, changed through the REST
// resource (/board/tasks) and the live socket's "claim" and "release" messages.
import {connect} from "/static/live/live.js";
import {button, element} from "/static/demo/dom.js";

/** A fetch of the board's JSON resource: {ok, status, data}; data is the error's text if not ok. */
async function api(method, url, body, headers = {}) {
  // With the xsrf_cookies setting on, Tornado wants the _xsrf cookie's value back.
  const xsrf = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/)?.[1];
  let response;
  try {
    response = await fetch(url, {
      method,
      headers: {
        ...(body ? {"Content-Type": "application/json"} : {}),
        ...(xsrf ? {"X-XSRFToken": decodeURIComponent(xsrf)} : {}),
        ...headers,
      },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (failure) {
    return {ok: false, status: 0, data: "the server cannot be reached; try again in a moment"};
  }
  let data = null;
  if (response.status !== 204) data = await response.json().catch(() => null);
  if (!response.ok) data = data?.error ?? `${method} ${url} answered ${response.status}`;
  return {ok: response.ok, status: response.status, data};
}

const board = document.getElementById("board");
if (board) showBoard(board);
else signIn(document.getElementById("sign-in"));

function signIn(form) {
  const error = document.getElementById("sign-in-error");
  form.onsubmit = async (submit) => {
    submit.preventDefault();
    error.textContent = "";
    const answer = await api("POST", "/board/session", Object.fromEntries(new FormData(form)));
    if (answer.ok) location.reload();   // the page, and its live socket, with the session
    else error.textContent = answer.data;
  };
  form.elements.name.focus();
}

function showBoard(board) {
  const me = board.dataset.name;
  const team = board.dataset.team;
  const channel = `teams/${team}/tasks`;
  const teams = [...new Set(["red", "blue", "green", "gold", team])].sort();

  document.getElementById("sign-out").onclick = async () => {
    await api("DELETE", "/board/session");
    location.reload();
  };

  // -- what the page shows ---------------------------------------------------------------

  const tasks = new Map();   // id -> the task as the page shows it (public fields, version)
  const cards = new Map();   // id -> its <li>
  const lists = {todo: document.getElementById("todo"), done: document.getElementById("done")};

  /** Show a task the server sent (an answer to this page's own write, or an event), unless
   * the page already shows that version or a later one. */
  function apply(task) {
    const shown = tasks.get(task.id);
    if (shown && shown.version >= task.version) return;
    if (task.team === team) tasks.set(task.id, task);
    else tasks.delete(task.id);   // moved to another team: not ours to show any more
    render();
  }

  // --8<-- [start:subscribe]
  const state = document.getElementById("state");
  const live = connect("/live", {
    onState(name) {
      state.dataset.state = name;
      state.textContent = name;
    },
  });
  window.live = live;   // for the browser's console

  live.subscribe(channel, (event) => {
    // Only events newer than what the page shows of that task reach this handler.
    if (event.type === "created_task" || event.type === "updated_task") {
      apply(event.data);
    } else if (event.type === "deleted_task") {   // deleted, or moved to another team
      tasks.delete(event.data.id);
      render();
    }
  }, {
    onSnapshot(documents, {more}) {   // the team's tasks now; again after any start-over
      tasks.clear();
      for (const task of documents) tasks.set(task.id, task);
      render();
      if (more) notify(`Showing the first ${documents.length} tasks only.`, "more");
    },
    onError(error) {   // "forbidden": the session is gone (signed out in another tab, say)
      notify(`The board is not live: ${error.message}. Sign in again.`, error.code);
    },
  });
  // --8<-- [end:subscribe]

  // -- writes ----------------------------------------------------------------------------

  // --8<-- [start:write]
  /** PATCH only these fields. With `version`, only if the task is still at that version:
   * the server answers 412 if someone changed it meanwhile, and nothing is written. */
  async function change(task, fields, version = null) {
    const headers = version === null ? {} : {"If-Match": `"${version}"`};
    const answer = await api("PATCH", `/board/tasks/${task.id}`, fields, headers);
    if (answer.ok) apply(answer.data);
    else if (answer.status === 412) {
      const now = tasks.get(task.id);
      notify(
        `“${task.title}” was changed by someone else while you edited it` +
          (now ? ` (it is now “${now.title}”)` : "") + ": your edit was not saved.",
        "stale",
      );
    } else notify(`Could not change “${task.title}”: ${answer.data}`, "error");
    return answer.ok;
  }

  async function claim(task) {
    try {
      apply(await live.request("claim", {id: task.id}));   // the reply is the claimed task
    } catch (refused) {   // "already_claimed": someone was faster
      notify(`Could not claim “${task.title}”: ${refused.message}`, refused.code);
    }
  }
  // --8<-- [end:write]

  async function release(task) {
    try {
      apply(await live.request("release", {id: task.id}));
    } catch (refused) {
      notify(`Could not release “${task.title}”: ${refused.message}`, refused.code);
    }
  }

  async function deleteTask(task) {
    const answer = await api("DELETE", `/board/tasks/${task.id}`);
    if (!answer.ok) notify(`Could not delete “${task.title}”: ${answer.data}`, "error");
    else if (tasks.delete(task.id)) render();
  }

  const form = document.getElementById("add");
  form.onsubmit = async (submit) => {
    submit.preventDefault();
    const title = form.elements.title.value;
    const answer = await api("POST", "/board/tasks", {title});
    if (answer.ok) {
      form.reset();
      apply(answer.data);
    } else notify(`Could not add the task: ${answer.data}`, "error");
  };

  // -- notices ---------------------------------------------------------------------------

  const notice = document.getElementById("notice");
  const noticeText = document.getElementById("notice-text");
  let noticeTimer = null;
  function notify(text, code) {
    noticeText.textContent = text;
    notice.dataset.code = code;
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (notice.hidden = true), 12000);
  }
  notice.querySelector("button").onclick = () => (notice.hidden = true);

  // -- cards -----------------------------------------------------------------------------

  function render() {
    const columns = {todo: [], done: []};
    for (const task of tasks.values()) columns[task.done ? "done" : "todo"].push(task);
    for (const [name, list] of Object.entries(lists)) {
      const wanted = columns[name];
      wanted.forEach((task, index) => {
        const item = cardOf(task);
        if (list.children[index] !== item) list.insertBefore(item, list.children[index] ?? null);
      });
      // What is left over belongs to the other column (or to no task any more).
      while (list.children.length > wanted.length) list.children[wanted.length].remove();
      document.getElementById(`${name}-count`).textContent = wanted.length;
      list.closest(".column").classList.toggle("is-empty", wanted.length === 0);
    }
    for (const [id, item] of cards) {
      if (!tasks.has(id)) {
        cards.delete(id);
        item.remove();
      }
    }
  }

  /** The task's card, made or brought up to date (an open title editor is left alone). */
  function cardOf(task) {
    let item = cards.get(task.id);
    if (!item) {
      item = element("li", "card");
      item.dataset.id = task.id;
      item.draggable = true;
      item.ondragstart = (drag) => {
        drag.dataTransfer.setData("text/x-task", item.dataset.id);
        drag.dataTransfer.effectAllowed = "move";
        item.classList.add("dragging");
      };
      item.ondragend = () => item.classList.remove("dragging");
      item.append(element("div", "head"), element("div", "tools"));
      cards.set(task.id, item);
    }
    const [head, tools] = item.children;
    item.dataset.version = task.version;
    item.classList.toggle("done", task.done);
    item.classList.toggle("mine", task.assignee === me);

    const check = button(task.done ? "✓" : "", "check", () => change(task, {done: !task.done}));
    check.title = task.done ? "Mark as to do" : "Mark as done";
    check.setAttribute("aria-label", check.title);
    const editing = head.querySelector("input.title-edit");
    if (editing) {
      head.firstElementChild.replaceWith(check);   // the editor keeps its text and focus
    } else {
      const title = element("span", "title", task.title);
      title.tabIndex = 0;
      title.title = "Click to edit";
      title.onclick = () => edit(item, title, task);
      title.onkeydown = (key) => key.key === "Enter" && edit(item, title, task);
      head.replaceChildren(check, title);
    }

    const who = element("div", "who");
    if (task.assignee) {
      const avatar = element("span", "avatar", task.assignee.slice(0, 1).toUpperCase());
      avatar.setAttribute("aria-hidden", "true");
      who.append(avatar, element("span", "assignee", task.assignee === me ? "you" : task.assignee));
      if (task.assignee === me) who.append(button("Release", "release", () => release(task)));
    } else if (!task.done) {
      who.append(button("Claim", "claim", () => claim(task)));
    }
    who.title = task.assignee ? `claimed by ${task.assignee}` : "nobody has claimed it";

    const move = element("select", "move");
    move.setAttribute("aria-label", "Move to another team");
    move.append(new Option("Move to…", ""));
    for (const other of teams) if (other !== team) move.append(new Option(other, other));
    move.append(new Option("Other team…", "*"));
    move.onchange = () => {
      if (move.value === "*") otherTeam(move, task);
      else if (move.value) change(task, {team: move.value});
    };

    const remove = button("Delete", "delete", () => confirmDelete(remove, task));
    tools.replaceChildren(who, move, remove);
    return item;
  }

  /** Inline editing of the title: Enter (or leaving the field) saves, Escape cancels. The
   * save carries the version the edit started from, so a change made meanwhile is not lost. */
  function edit(item, title, task) {
    const version = task.version;
    const input = element("input", "title-edit");
    input.value = task.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "Title");
    item.draggable = false;
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const text = input.value.trim();
      if (save && text && text !== task.title) await change(task, {title: text}, version);
      item.draggable = true;
      input.replaceWith(title);
      const latest = tasks.get(task.id);
      if (latest) cardOf(latest);   // what the server has now, whatever happened
    };
    input.onkeydown = (key) => {
      if (key.key === "Enter") finish(true);
      else if (key.key === "Escape") finish(false);
    };
    input.onblur = () => finish(true);
    title.replaceWith(input);
    input.focus();
    input.select();
  }

  function otherTeam(move, task) {
    const input = element("input", "team-edit");
    input.placeholder = "team";
    input.maxLength = 32;
    input.setAttribute("aria-label", "Move to team");
    const cancel = () => {
      input.replaceWith(move);
      move.value = "";
    };
    input.onkeydown = (key) => {
      if (key.key === "Enter" && input.value.trim()) change(task, {team: input.value.trim()});
      if (key.key === "Enter" || key.key === "Escape") cancel();
    };
    input.onblur = cancel;
    move.replaceWith(input);
    input.focus();
  }

  function confirmDelete(remove, task) {
    if (remove.classList.contains("sure")) return void deleteTask(task);
    remove.classList.add("sure");
    remove.textContent = "Delete?";
    setTimeout(() => {
      remove.classList.remove("sure");
      remove.textContent = "Delete";
    }, 3000);
  }

  // -- drag and drop between the columns ---------------------------------------------------

  for (const column of document.querySelectorAll(".column")) {
    const done = column.dataset.column === "done";
    column.ondragover = (drag) => {
      if (!drag.dataTransfer.types.includes("text/x-task")) return;
      drag.preventDefault();
      column.classList.add("target");
    };
    column.ondragleave = (drag) => {
      if (!column.contains(drag.relatedTarget)) column.classList.remove("target");
    };
    column.ondrop = (drop) => {
      drop.preventDefault();
      column.classList.remove("target");
      const task = tasks.get(drop.dataTransfer.getData("text/x-task"));
      if (task && task.done !== done) change(task, {done});
    };
  }
}

