// The chat page: one Server-Sent Events stream for pushes, and calls to
// the ChatRoom object over the gate's HTTP API. Query parameters join
// and send at once: ?room=lobby&name=ada&send=hello; with &until=N the
// page closes its event stream after showing N chat messages (headless
// browsers then see a page that has finished loading).
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const state = {clientId: null, room: null, name: null, autoSend: params.get("send"),
                 until: Number(params.get("until") || 0), shown: 0};

  if (params.get("room")) $("room").value = params.get("room");
  if (params.get("name")) $("name").value = params.get("name");

  function status(text) {
    $("status").textContent = text;
  }

  function show(name, text, system) {
    const item = document.createElement("li");
    if (system) {
      item.className = "system";
      item.textContent = text;
    } else {
      item.className = "msg";
      const who = document.createElement("span");
      who.className = "name";
      who.textContent = name + ":";
      item.append(who, document.createTextNode(text));
    }
    $("messages").append(item);
    item.scrollIntoView({block: "end"});
  }

  // chat.ChatMessage: room = 1, name = 2, text = 3, seq = 4.
  function showChatMessage(bytes) {
    const fields = Proto.decode(bytes);
    show(Proto.text((fields[2] || [])[0]), Proto.text((fields[3] || [])[0]));
    state.shown += 1;
    if (state.until && state.shown >= state.until) {
      events.close();
      document.body.dataset.done = "true";
      status("received " + state.shown + " messages; stream closed");
    }
  }

  async function callRoom(method, requestType, requestBytes) {
    const url = API + "/objects/call/ChatRoom/" + encodeURIComponent(state.room) + "/" + method;
    const reply = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-Client-ID": state.clientId},
      body: JSON.stringify({request: Proto.toBase64(Proto.packAny(requestType, requestBytes))}),
    });
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || reply.statusText);
    return Proto.unpackAny(Proto.fromBase64(body.response)).value;
  }

  async function join() {
    state.room = $("room").value.trim();
    state.name = $("name").value.trim();
    if (!state.room || !state.name || !state.clientId) return;
    // chat.JoinRequest: name = 1. chat.JoinResponse: history = 1, members = 2.
    const answer = Proto.decode(await callRoom("Join", "chat.JoinRequest",
                                               Proto.encodeStrings({1: state.name})));
    $("messages").textContent = "";
    show("", "joined " + state.room + " as " + state.name + " (" +
         ((answer[2] || [0])[0]) + " here)", true);
    for (const message of answer[1] || []) showChatMessage(message);
    $("text").disabled = $("send").disabled = false;
    document.body.dataset.joined = state.room;
    status("in room " + state.room + " as " + state.name);
    if (state.autoSend) {
      const text = state.autoSend;
      state.autoSend = null;
      await send(text);
    }
  }

  async function send(text) {
    // chat.SendRequest: text = 1.
    await callRoom("Send", "chat.SendRequest", Proto.encodeStrings({1: text}));
    document.body.dataset.sent = String(Number(document.body.dataset.sent || 0) + 1);
  }

  function report(error) {
    status("error: " + error.message);
  }

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    join().catch(report);
  });

  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (!text) return;
    $("text").value = "";
    send(text).catch(report);
  });

  const events = new EventSource(API + "/events/stream");
  events.addEventListener("register", (event) => {
    // A new stream (also after the gate restarted) has a new client id:
    // join again under it.
    state.clientId = JSON.parse(event.data).clientId;
    document.body.dataset.clientId = state.clientId;
    $("join").disabled = false;
    status("connected as " + state.clientId);
    if (state.room || params.get("room")) join().catch(report);
  });
  events.addEventListener("message", (event) => {
    const data = JSON.parse(event.data);
    const any = Proto.unpackAny(Proto.fromBase64(data.payload));
    if (any.typeUrl.endsWith("/chat.ChatMessage")) showChatMessage(any.value);
  });
  events.addEventListener("error", () => status("connection lost; reconnecting…"));
})();
