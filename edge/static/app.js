// Switchboard browser client: one WebSocket per session (protocol v1, docs/protocol.md).
// Microphone -> 20 ms PCM16 16 kHz frames (0x01); assistant audio <- 0x81 frames, played gap-free.
// Page state is on window.sb so that tests (and curious users) can read it.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const RECONNECT_MAX_S = 10;
const PLAYBACK_LEAD_S = 0.05; // scheduling margin so the first buffer never starts in the past
const FRAME_TYPE_PCM16 = 0x01;
const FRAME_TYPE_AUDIO_OUT = 0x81;

const sb = (window.sb = {
  status: "connecting", sessionId: null, welcomed: false, reconnects: 0, closes: [],
  micOn: false, muted: false, level: 0, sentFrames: 0,
  audioFrames: 0, scheduledBuffers: 0, playedBuffers: 0, flushes: 0, stoppedByFlush: 0,
  turns: {}, notice: null, protocolErrors: [], skewS: null, zoneSentTo: null,
  reminders: [], uploads: [], settings: {},
});

let token = null;
let expiresAt = 0;
let ws = null;
let reconnectTimer = null;
let refreshTimer = null;
let audioCtx = null;
let mic = null; // {stream, node}
let nextPlayAt = 0;
let frameSeq = 0;
const playing = new Set();
const flushedTurns = new Set();
const jobs = {}; // job_id -> the upload it came from (documents the user added on this page)
const earlyResults = {}; // ingest.result events that arrived before their upload's HTTP answer

// ------------------------------------------------------------------ notices and status

function setStatus(state, text) {
  sb.status = state;
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

function notify(text, action = null) {
  sb.notice = text;
  $("notice-text").textContent = text;
  const button = $("notice-action");
  button.hidden = !action;
  if (action) {
    button.textContent = action.label;
    button.onclick = () => { clearNotice(); action.run(); };
  }
  $("notice").hidden = false;
}

function clearNotice() {
  sb.notice = null;
  $("notice").hidden = true;
}

// ------------------------------------------------------------------ session and socket

async function api(path, bearer) {
  const headers = bearer ? { Authorization: `Bearer ${bearer}` } : {};
  const response = await fetch(path, { method: "POST", headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw Object.assign(new Error(body.detail || `HTTP ${response.status}`), { status: response.status });
  return body;
}

function keep(grant) {
  token = grant.token;
  expiresAt = grant.expires_at;
  sb.sessionId = grant.session_id;
  $("session-id").textContent = grant.session_id;
  sessionStorage.setItem("sb.session", JSON.stringify(grant));
  clearTimeout(refreshTimer);
  const refreshIn = Math.max(5, expiresAt - Date.now() / 1000 - 120);
  refreshTimer = setTimeout(() => api("/v1/sessions/refresh", token).then(keep).catch(() => {}), refreshIn * 1000);
}

async function obtainSession(fresh = false) {
  const saved = fresh ? null : JSON.parse(sessionStorage.getItem("sb.session") || "null");
  if (saved && saved.expires_at - Date.now() / 1000 > 30) {
    try { return keep(await api("/v1/sessions/refresh", saved.token)); } catch { /* expired or new secret */ }
  }
  keep(await api("/v1/sessions", params.get("key")));
}

async function start(fresh = false) {
  clearTimeout(reconnectTimer);
  setStatus(sb.reconnects ? "reconnecting" : "connecting", sb.reconnects ? "Reconnecting…" : "Connecting…");
  try {
    await obtainSession(fresh);
  } catch (error) {
    if (error.status === 401) {
      setStatus("offline", "Not signed in");
      notify("This server needs an API key to start a conversation. Open the page with ?key=<your key>.");
      return;
    }
    return retryLater("Can't reach the assistant server.");
  }
  connect();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/v1/ws`);
  ws.binaryType = "arraybuffer";
  sb.welcomed = false;
  ws.onopen = () => ws.send(JSON.stringify({
    type: "hello", protocol: 1, token, client: navigator.userAgent.slice(0, 200),
    capabilities: ["text", "audio_in", "audio_out"], audio: { sample_rate: 16000, encoding: "pcm_s16le" },
  }));
  ws.onmessage = (message) => (typeof message.data === "string" ? onText(message.data) : onAudio(message.data));
  ws.onclose = (event) => onClose(event.code);
}

function onClose(code) {
  const wasWelcomed = sb.welcomed;
  sb.welcomed = false;
  sb.closes.push(code);
  stopPlayback();
  if (code === 4003 || code === 4004) {
    notify("Your session ended, so a new conversation was started.");
    sb.reconnects += 1;
    return void start(true);
  }
  if (code === 4009) {
    setStatus("offline", "Open elsewhere");
    return notify("This conversation is already open in other tabs. Close one of them, then try again.",
                  { label: "Try again", run: () => start() });
  }
  if (code === 4008) notify("The server closed the connection after too many refused messages. Reconnecting…");
  sb.reconnects += 1;
  if (wasWelcomed && code !== 1006) return void start(); // the server restarted or asked us to come back
  retryLater("Lost the connection to the assistant server.");
}

function retryLater(reason) {
  const delay = Math.min(RECONNECT_MAX_S, 0.5 * 2 ** Math.min(sb.reconnects, 5));
  setStatus("offline", "Offline");
  notify(`${reason} Retrying in ${Math.round(delay)} s.`, { label: "Retry now", run: () => start() });
  reconnectTimer = setTimeout(() => start(), delay * 1000);
}

function send(command) {
  if (ws && ws.readyState === WebSocket.OPEN && sb.welcomed) {
    ws.send(JSON.stringify(command));
    return true;
  }
  notify("Not connected yet; your message was not sent. Try again in a moment.");
  return false;
}

// ------------------------------------------------------------------ events from the edge

function turnOf(id) {
  if (!sb.turns[id]) sb.turns[id] = { id, user: null, reply: "", timing: {}, latency: {}, audioFrames: 0, played: 0 };
  return sb.turns[id];
}

function bubble(turn, role) {
  const key = `${role}El`;
  if (!turn[key]) {
    const li = document.createElement("li");
    li.className = `msg ${role}`;
    li.dataset.turn = turn.id;
    const text = document.createElement("span");
    text.className = "text";
    li.append(text);
    $("log").append(li);
    turn[key] = li;
  }
  return turn[key];
}

function toolItem(turn, callId) {
  // The turn's tool calls, listed above its reply text as they happen.
  const li = bubble(turn, "assistant");
  let list = li.querySelector(".tools");
  if (!list) {
    list = document.createElement("ul");
    list.className = "tools";
    list.setAttribute("aria-label", "Tools used");
    li.prepend(list);
  }
  let item = [...list.children].find((child) => child.dataset.call === callId);
  if (!item) {
    item = document.createElement("li");
    item.dataset.call = callId;
    list.append(item);
  }
  return item;
}

function shortArguments(raw) {
  let text = raw;
  try { text = Object.values(JSON.parse(raw)).join(", "); } catch { /* shown as the model wrote it */ }
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

function note(kind, text) {
  // A line in the conversation that belongs to no turn (a reminder, a document added): text only.
  const li = document.createElement("li");
  li.className = `msg note ${kind}`;
  li.textContent = text;
  $("log").append(li);
  scrollDown();
  return li;
}

function citationItem(cite) {
  // "Title — Section" and the document's own name (what the user uploaded), both as text.
  const item = document.createElement("li");
  const stem = (cite.source || "").replace(/\.[^./]+$/, "");
  const title = cite.title && cite.title !== cite.source && cite.title !== stem ? cite.title : "";
  const section = cite.section && cite.section !== cite.title ? cite.section : "";
  const label = [title, section].filter(Boolean).join(" — ");
  if (label) {
    const what = document.createElement("span");
    what.className = "cite-title";
    what.textContent = label;
    item.append(what, " ");
  }
  const source = document.createElement("span");
  source.className = "cite-source";
  source.textContent = cite.source || cite.title || "document";
  item.append(source);
  return item;
}

function toolOutcome(result) {
  // What came back, in words: the tool's own text, or what a document search found.
  if (typeof result?.text === "string") return result.text;
  if (Array.isArray(result?.passages)) {
    const count = result.passages.length;
    const sources = [...new Set(result.passages.map((p) => p.source))].join(", ");
    return count ? `${count} passage${count === 1 ? "" : "s"} from ${sources}` : "nothing found";
  }
  return JSON.stringify(result);
}

function scrollDown() {
  const main = document.querySelector("main");
  main.scrollTop = main.scrollHeight;
}

function seeClock(event) {
  // Our clock minus the server's, bounded by the one-way delay: the smallest sample is the best estimate.
  if (typeof event.published_at === "number") {
    const sample = Date.now() / 1000 - event.published_at;
    sb.skewS = sb.skewS === null ? sample : Math.min(sb.skewS, sample);
  }
}

const handlers = {
  welcome(event) {
    sb.welcomed = true;
    sb.sessionId = event.session_id;
    // The date and time tool answers in the user's own time zone.
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && sb.zoneSentTo !== event.session_id) {
      send({ type: "settings", time_zone: zone });
      sb.zoneSentTo = event.session_id;
    }
    setStatus("connected", "Connected");
    if (sb.reconnects) clearNotice();
  },
  "turn.user"(event) {
    const turn = turnOf(event.turn_id);
    turn.user = event.text;
    turn.source = event.source;
    turn.timing.start = event.source === "spoken" ? (event.speech_ended_at ?? turn.timing.start) : event.captured_at;
    const li = bubble(turn, "user");
    li.querySelector(".text").textContent = event.text;
    if (event.source === "spoken") li.dataset.source = "spoken";
    $("partial").hidden = true;
    scrollDown();
  },
  "vad.speech_started"() {
    $("partial").textContent = "Listening…";
    $("partial").hidden = false;
  },
  "vad.speech_stopped"(event) {
    turnOf(event.turn_id).timing.start = event.speech_ended_at ?? event.audio_at ?? event.published_at;
  },
  "transcript.partial"(event) {
    $("partial").textContent = event.text || "Listening…";
    $("partial").hidden = false;
  },
  "transcript.final"(event) {
    const turn = turnOf(event.turn_id);
    turn.timing.final = event.published_at;
    turn.finalText = event.text;
    $("partial").hidden = true;
  },
  "reply.delta"(event) {
    const turn = turnOf(event.turn_id);
    turn.timing.firstText ??= event.published_at;
    turn.reply += event.text;
    const li = bubble(turn, "assistant");
    li.classList.add("streaming");
    li.querySelector(".text").textContent = turn.reply;
    scrollDown();
  },
  "tool.call"(event) {
    const item = toolItem(turnOf(event.turn_id), event.call_id);
    item.dataset.label = `${event.name}(${shortArguments(event.arguments)})`;
    item.className = "tool pending";
    item.textContent = `${item.dataset.label} …`;
    scrollDown();
  },
  "tool.result"(event) {
    const item = toolItem(turnOf(event.turn_id), event.call_id);
    const label = item.dataset.label ?? event.name;
    const ok = event.status === "ok";
    const outcome = ok ? toolOutcome(event.result) : `${event.status}: ${event.error}`;
    item.className = ok ? "tool ok" : "tool failed";
    item.textContent = `${label} → ${outcome}`;
  },
  "reply.done"(event) {
    const turn = turnOf(event.turn_id);
    turn.done = event;
    if (!event.text && event.finish_reason !== "stop") return finishReadout(turn);
    const li = bubble(turn, "assistant");
    li.classList.remove("streaming");
    li.querySelector(".text").textContent = event.text;
    turn.reply = event.text;
    if (event.finish_reason === "cancelled" || event.finish_reason === "superseded") li.classList.add("cancelled");
    if (event.citations?.length) {
      const list = document.createElement("ol");
      list.className = "cites";
      list.setAttribute("aria-label", "Sources");
      const seen = new Set();
      for (const cite of event.citations) {
        const key = `${cite.document_id || cite.source}|${cite.section}`;
        if (seen.has(key)) continue; // several passages of one section are one source
        seen.add(key);
        list.append(citationItem(cite));
      }
      li.append(list);
    }
    finishReadout(turn);
  },
  "reminder.due"(event) {
    // No turn owns it: a line of its own, so a reply streaming meanwhile keeps its bubble.
    if (sb.reminders.some((r) => r.id === event.reminder_id)) return;
    sb.reminders.push({ id: event.reminder_id, text: event.text, dueAt: event.due_at });
    const li = note("reminder", `⏰ Reminder: ${event.text}`);
    li.dataset.reminder = event.reminder_id;
  },
  "job.progress"(event) {
    const job = jobs[event.job_id];
    if (job && job.upload.status === "adding" && event.total) {
      job.item.textContent = `📄 Adding ${job.upload.name} to your documents… (${event.stage} ${event.done}/${event.total})`;
    }
  },
  "ingest.result"(event) {
    if (jobs[event.job_id]) showIngestResult(event);
    else earlyResults[event.job_id] = event;
  },
  error(event) {
    const li = document.createElement("li");
    li.className = "msg error";
    li.textContent = event.message + (event.retryable ? " You can try again." : "");
    $("log").append(li);
    scrollDown();
  },
  flush(event) {
    sb.flushes += 1;
    if (event.turn_id) {
      flushedTurns.add(event.turn_id);
      const turn = turnOf(event.turn_id);
      turn.flushed = playing.size > 0 || !turn.done;
      renderReadout(turn);
    }
    sb.stoppedByFlush += playing.size;
    stopPlayback();
  },
  "audio.done"(event) {
    turnOf(event.turn_id).audioDone = event;
  },
  "session.settings"(event) {
    // The session's settings as the server echoed them (null: unchanged).
    for (const field of ["agent", "tone", "voice", "tts_provider", "language", "knowledge_bases", "time_zone"]) {
      if (event[field] !== null && event[field] !== undefined) sb.settings[field] = event[field];
    }
    for (const field of ["agent", "tone", "tts_provider", "voice"]) {
      if (event[field]) $(field).value = event[field];
    }
  },
  protocol_error(event) {
    sb.protocolErrors.push(event);
    const advice = {
      rate_limited: "You are sending too fast; wait a moment.",
      too_big: "That message is too long; shorten it.",
    }[event.code] ?? "";
    if (!event.fatal) notify(`The server refused a message: ${event.message}. ${advice}`.trim());
  },
};

function onText(raw) {
  let event;
  try { event = JSON.parse(raw); } catch { return; }
  seeClock(event);
  handlers[event.kind]?.(event);
}

function finishReadout(turn) {
  const t = turn.timing;
  const ms = (a, b) => (typeof a === "number" && typeof b === "number" ? Math.round((b - a) * 1000) : null);
  turn.latency = {
    toFinal: ms(t.start, t.final), toFirstText: ms(t.start, t.firstText), toFirstAudio: ms(t.start, t.firstAudio),
  };
  renderReadout(turn);
}

function renderReadout(turn) {
  const li = turn.assistantEl;
  if (!li) return;
  const l = turn.latency ?? {};
  const origin = turn.source === "spoken" ? "end of speech" : "sent";
  const parts = [];
  if (l.toFinal !== null && l.toFinal !== undefined) parts.push(`transcript ${l.toFinal} ms`);
  if (l.toFirstText !== null && l.toFirstText !== undefined) parts.push(`first text ${l.toFirstText} ms`);
  if (l.toFirstAudio !== null && l.toFirstAudio !== undefined) parts.push(`first audio ${l.toFirstAudio} ms`);
  let meta = li.querySelector(".meta");
  if (!meta) {
    meta = document.createElement("small");
    meta.className = "meta";
    li.append(meta);
  }
  const cut = turn.flushed || ["cancelled", "superseded"].includes(turn.done?.finish_reason);
  const stopped = cut ? "interrupted · " : "";
  meta.textContent = stopped + (parts.length ? `${origin} → ${parts.join(" · ")}` : "");
}

// ------------------------------------------------------------------ documents (POST /v1/ingest)

async function addDocument(file) {
  const upload = { name: file.name, status: "adding", jobId: null, chunks: 0, error: "" };
  sb.uploads.push(upload);
  const item = note("doc adding", `📄 Adding ${file.name} to your documents…`);
  try {
    if (!token) throw new Error("not connected yet; try again in a moment");
    const query = new URLSearchParams({ filename: file.name, wait: "30" });
    // The body is the file itself; the browser sends its type (the edge guesses from the name otherwise).
    const response = await fetch(`/v1/ingest?${query}`, {
      method: "POST", headers: { Authorization: `Bearer ${token}` }, body: file,
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
    upload.jobId = body.job_id;
    jobs[body.job_id] = { upload, item };
    const result = body.result ?? earlyResults[body.job_id];
    if (result) showIngestResult(result); // else it comes on the socket (ingest.result)
  } catch (error) {
    upload.status = "failed";
    upload.error = error.message;
    item.className = "msg note doc failed";
    item.textContent = `📄 ${file.name} could not be added: ${error.message}`;
  }
}

function showIngestResult(result) {
  const { upload, item } = jobs[result.job_id];
  delete earlyResults[result.job_id];
  if (upload.status !== "adding") return; // the HTTP answer and the socket both bring it
  upload.status = result.status;
  upload.chunks = result.chunks;
  upload.error = result.error;
  const passages = `${result.chunks} passage${result.chunks === 1 ? "" : "s"}`;
  item.className = `msg note doc ${result.status === "failed" ? "failed" : "added"}`;
  item.textContent = {
    ingested: `📄 ${upload.name} was added to your documents (${passages}). Ask about it.`,
    unchanged: `📄 ${upload.name} is already in your documents, unchanged.`,
    failed: `📄 ${upload.name} could not be added: ${result.error || "it could not be read"}`,
  }[result.status] ?? `📄 ${upload.name}: ${result.status}`;
}

// ------------------------------------------------------------------ assistant audio

function context() {
  audioCtx ??= new AudioContext({ latencyHint: "interactive" });
  if (audioCtx.state === "suspended") audioCtx.resume();
  return audioCtx;
}

function onAudio(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < 12 || view.getUint8(0) !== FRAME_TYPE_AUDIO_OUT) return;
  const idLength = view.getUint8(2);
  const rate = view.getUint32(8, true);
  const turnId = String.fromCharCode(...new Uint8Array(buffer, 12, idLength));
  if (flushedTurns.has(turnId)) return;
  sb.audioFrames += 1;
  const turn = turnOf(turnId);
  turn.audioFrames += 1;
  if (turn.timing.firstAudio === undefined) {
    turn.timing.firstAudio = Date.now() / 1000 - (sb.skewS ?? 0);
    if (turn.done) finishReadout(turn);
  }
  const pcm = new Int16Array(buffer.slice(12 + idLength));
  if (!pcm.length) return;
  const ctx = context();
  const clip = ctx.createBuffer(1, pcm.length, rate);
  const samples = clip.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  const source = ctx.createBufferSource();
  source.buffer = clip;
  source.connect(ctx.destination);
  const at = Math.max(nextPlayAt, ctx.currentTime + PLAYBACK_LEAD_S);
  source.start(at);
  nextPlayAt = at + clip.duration;
  sb.scheduledBuffers += 1;
  playing.add(source);
  source.onended = () => {
    playing.delete(source);
    sb.playedBuffers += 1;
    turn.played += 1;
  };
}

function stopPlayback() {
  for (const source of playing) {
    source.onended = null;
    try { source.stop(); } catch { /* not started yet */ }
  }
  playing.clear();
  nextPlayAt = 0;
}

// ------------------------------------------------------------------ microphone

const MIC_ERRORS = {
  NotAllowedError: "Microphone access was denied. Allow the microphone for this site in your browser's settings, "
    + "then press the microphone button again. You can type meanwhile.",
  SecurityError: "This page may not use the microphone here (it needs https or localhost). You can type instead.",
  NotFoundError: "No microphone was found. Connect one and press the microphone button again, or type instead.",
  OverconstrainedError: "No usable microphone was found. Connect one and try again, or type instead.",
  NotReadableError: "The microphone is busy in another application. Close it there and try again.",
};

async function startMic() {
  if (!navigator.mediaDevices?.getUserMedia) {
    return notify(MIC_ERRORS.SecurityError);
  }
  const processing = params.get("aec") !== "0"; // tests turn the browser's voice processing off
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
    });
  } catch (error) {
    return notify(MIC_ERRORS[error.name] ?? `The microphone could not start (${error.name}).`);
  }
  const ctx = context();
  await ctx.audioWorklet.addModule("/static/mic-worklet.js");
  const node = new AudioWorkletNode(ctx, "mic-capture");
  const silent = ctx.createGain();
  silent.gain.value = 0; // keeps the worklet pulled by the graph without playing the mic back
  ctx.createMediaStreamSource(stream).connect(node).connect(silent).connect(ctx.destination);
  node.port.onmessage = ({ data }) => onMicFrame(data.pcm, data.level);
  mic = { stream, node };
  sb.micOn = true;
  $("mic").setAttribute("aria-pressed", "true");
  $("mic").setAttribute("aria-label", "Stop microphone");
  $("mute").disabled = false;
}

function stopMic() {
  if (!mic) return;
  mic.node.port.onmessage = null;
  mic.node.disconnect();
  for (const track of mic.stream.getTracks()) track.stop();
  mic = null;
  sb.micOn = false;
  sb.level = 0;
  $("level").value = 0;
  $("mic").setAttribute("aria-pressed", "false");
  $("mic").setAttribute("aria-label", "Start microphone");
  $("mute").disabled = true;
}

function onMicFrame(pcm, level) {
  sb.level = level;
  $("level").value = sb.muted ? 0 : Math.min(1, level * 4);
  if (sb.muted || !ws || ws.readyState !== WebSocket.OPEN || !sb.welcomed) return;
  const frame = new ArrayBuffer(16 + pcm.byteLength);
  const header = new DataView(frame);
  header.setUint8(0, FRAME_TYPE_PCM16);
  header.setUint8(1, 1);
  header.setUint16(2, 0, true);
  header.setUint32(4, frameSeq++ >>> 0, true);
  header.setFloat64(8, (performance.timeOrigin + performance.now()) / 1000 - 0.02, true);
  new Uint8Array(frame, 16).set(new Uint8Array(pcm));
  ws.send(frame);
  sb.sentFrames += 1;
}

// ------------------------------------------------------------------ controls

$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text) return;
  context(); // a click is the gesture that lets the page play the reply
  if (send({ type: "chat", text })) input.value = "";
});

$("mic").addEventListener("click", () => (mic ? stopMic() : startMic()));

$("mute").addEventListener("click", () => {
  sb.muted = !sb.muted;
  $("mute").setAttribute("aria-pressed", String(sb.muted));
  $("mute").textContent = sb.muted ? "Unmute" : "Mute";
});

$("stop").addEventListener("click", () => {
  stopPlayback();
  send({ type: "interrupt" });
});

$("attach").addEventListener("click", () => $("document").click());

$("document").addEventListener("change", () => {
  const input = $("document");
  for (const file of input.files) addDocument(file);
  input.value = ""; // choosing the same file again is a new upload
});

$("notice-close").addEventListener("click", clearNotice);

for (const field of ["agent", "tone", "tts_provider", "voice"]) {
  $(field).addEventListener("change", () => {
    const value = $(field).value.trim();
    if (value) send({ type: "settings", [field]: value });
  });
}

start();
