// The kiosk page: microphone -> WebSocket -> `edgevoice serve`, the agent's audio -> speaker, and
// what the conversation is doing in plain words. The wire protocol is the one `edgevoice serve`
// speaks: hello / ready, PCM16 frames both ways, runtime events, flush at a barge-in.
//
// `window.kiosk` holds counters and the last texts so that a test (or a curious person at the
// console) can see what reached the page.

const MIC_RATE = 16000; // what the speech models listen at: the server need not resample
const FRAME_MS = 20; // one mic frame; the server answers each with one frame of agent audio
const PREBUFFER_MS = 60; // agent audio held back before playing, against network jitter
const MAX_QUEUE_MS = 2000; // the most agent audio the speaker queue holds
const MAX_PENDING_FRAMES = 150; // mic audio kept while the server gets ready: 3 s
const MAX_UNSENT_BYTES = 64000; // ~2 s of mic audio waiting in the socket: beyond it, drop frames
const SILENCE_LEVEL = 64; // |PCM16| above this somewhere in a frame: the frame is not silence
const MAX_LOG = 200;
const NOTICE_MS = 8000; // how long a warning from the server stays on screen

const kiosk = {
  state: "idle", // idle | connecting | listening | user speaking | thinking | speaking | closed
  framesSent: 0,
  framesDropped: 0,
  clippedFrames: 0, // mic frames that reached full scale: the browser's gain control is too loud
  audioFramesReceived: 0,
  nonSilentAudioFrames: 0,
  flushes: 0,
  playback: {}, // the speaker queue's own counters (played, nonSilentPlayed, underruns, dropped)
  ready: null, // the server's ready message
  lastPartial: "",
  lastTranscript: "",
  transcriptTurn: null, // the user turn that lastTranscript belongs to
  lastReply: "",
  lastError: "",
  lastWarning: "",
  closeCode: null,
  closeReason: "",
  events: [], // kinds of the runtime events received, oldest first (the last MAX_LOG)
};
window.kiosk = kiosk;

const $ = (id) => document.getElementById(id);
let conversation = null; // the running one: { socket, context, stream, mic, speaker }

// ---- what the page shows -------------------------------------------------------------------

function show(id, text) {
  $(id).textContent = text;
}

function setState(state) {
  kiosk.state = state;
  show("state", state);
  document.body.dataset.state = state.replace(" ", "-");
}

function showProblem(message) {
  kiosk.lastError = message;
  show("problem", message);
  $("problem").hidden = !message;
}

function setTalking(talking) {
  $("talk").textContent = talking ? "Stop" : "Talk";
  $("talk").setAttribute("aria-pressed", String(talking));
  $("token").disabled = talking;
}

// ---- the conversation ----------------------------------------------------------------------

function socketUrl(token) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`;
}

async function start() {
  showProblem("");
  kiosk.closeCode = null;
  kiosk.closeReason = "";
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error("This browser cannot reach the microphone here: open the page over https (or on localhost) in a current browser.");
  }
  setState("connecting");
  setTalking(true);
  // Created inside the click handler: browsers only let a user gesture start audio.
  const context = new AudioContext({ latencyHint: "interactive" });
  conversation = { context, socket: null, stream: null, mic: null, speaker: null, pending: [] };
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  if (!conversation || conversation.context !== context) {
    stream.getTracks().forEach((track) => track.stop());
    return; // stopped while the browser asked for the microphone
  }
  conversation.stream = stream;
  await context.audioWorklet.addModule("worklet.js");
  await context.resume();
  if (!conversation || conversation.context !== context) return; // stopped while starting
  // Listen from now on: what is said before the server is ready waits in `pending`.
  conversation.mic = new AudioWorkletNode(context, "mic-capture", {
    numberOfOutputs: 0,
    processorOptions: { targetRate: MIC_RATE, frameMs: FRAME_MS },
  });
  conversation.mic.port.onmessage = (message) => sendFrame(message.data);
  context.createMediaStreamSource(stream).connect(conversation.mic);
  conversation.socket = connect($("token").value.trim(), context);
}

function connect(token, context) {
  const socket = new WebSocket(socketUrl(token));
  socket.binaryType = "arraybuffer";
  let opened = false;
  socket.onopen = () => {
    opened = true;
    // Ask for the agent's audio at the context's own rate: the server resamples, the page plays.
    const outputRate = Math.min(48000, Math.max(8000, Math.round(context.sampleRate)));
    socket.send(JSON.stringify({ type: "hello", rate: MIC_RATE, format: "pcm16", output_rate: outputRate }));
  };
  socket.onmessage = (message) => {
    if (typeof message.data === "string") receiveText(JSON.parse(message.data));
    else receiveAudio(message.data);
  };
  socket.onclose = (close) => closed(close, opened, token);
  return socket;
}

function receiveText(message) {
  if (message.type === "ready") beginAudio(message);
  else if (message.type === "event") receiveEvent(message.event);
  else if (message.type === "flush") flush();
  else if (message.type === "error") showProblem(`The server says: ${message.message}`);
}

function beginAudio(ready) {
  kiosk.ready = ready;
  if (ready.rate !== MIC_RATE) {
    showProblem(`The server takes the microphone at ${ready.rate} Hz; this page sends ${MIC_RATE} Hz.`);
    stop();
    return;
  }
  const { context } = conversation;
  const speaker = new AudioWorkletNode(context, "speaker-queue", {
    numberOfInputs: 0,
    outputChannelCount: [1],
    processorOptions: { sourceRate: ready.output_rate, prebufferMs: PREBUFFER_MS, maxQueueMs: MAX_QUEUE_MS },
  });
  speaker.port.onmessage = (message) => { kiosk.playback = message.data; };
  speaker.connect(context.destination);
  conversation.speaker = speaker;
  const waiting = conversation.pending;
  conversation.pending = null;
  waiting.forEach(sendFrame);
  setState("listening");
}

function sendFrame(buffer) {
  if (!conversation) return;
  if (new Int16Array(buffer).some((sample) => sample >= 32767 || sample <= -32767)) kiosk.clippedFrames += 1;
  const { socket, pending } = conversation;
  if (pending) { // the server is not ready yet: hold on to the start of what the user says
    if (pending.length < MAX_PENDING_FRAMES) pending.push(buffer);
    else kiosk.framesDropped += 1;
    return;
  }
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (socket.bufferedAmount > MAX_UNSENT_BYTES) {
    kiosk.framesDropped += 1; // the network is not keeping up: lose audio, not memory
    return;
  }
  socket.send(buffer);
  kiosk.framesSent += 1;
}

function receiveAudio(buffer) {
  kiosk.audioFramesReceived += 1;
  const pcm = new Int16Array(buffer);
  if (pcm.some((sample) => Math.abs(sample) > SILENCE_LEVEL)) kiosk.nonSilentAudioFrames += 1;
  if (conversation && conversation.speaker) conversation.speaker.port.postMessage(buffer, [buffer]);
}

function flush() {
  // Barge-in: the user talks over the agent, so what it had still to say goes, now.
  kiosk.flushes += 1;
  if (conversation && conversation.speaker) conversation.speaker.port.postMessage("flush");
}

// ---- runtime events ------------------------------------------------------------------------

const STATE_AFTER = {
  user_speech_start: "user speaking",
  barge_in: "user speaking",
  turn_taken: "thinking",
  first_audio: "speaking",
  agent_done: "listening",
  cancel_done: "listening",
  dismissed: "listening",
};

function receiveEvent(event) {
  kiosk.events.push(event.kind);
  if (kiosk.events.length > MAX_LOG) kiosk.events.shift();
  const data = event.data || {};
  if (STATE_AFTER[event.kind]) setState(STATE_AFTER[event.kind]);
  if (event.kind === "partial_transcript") {
    if (event.turn !== kiosk.transcriptTurn) show("transcript", ""); // a new turn: its own words only
    kiosk.lastPartial = data.text || "";
    show("partial", kiosk.lastPartial);
  } else if (event.kind === "transcript") {
    kiosk.lastTranscript = data.text || "";
    kiosk.transcriptTurn = event.turn;
    show("transcript", kiosk.lastTranscript);
    show("partial", "");
  } else if (event.kind === "reply_text") {
    kiosk.lastReply = data.text || "";
    show("reply", kiosk.lastReply + (data.cancelled ? " (interrupted)" : ""));
  } else if (event.kind === "tool_call") {
    show("tool", `Using ${data.name || "a tool"}…`);
  } else if (event.kind === "tool_result" || event.kind === "tool_error") {
    show("tool", "");
  } else if (event.kind === "warning") {
    const warning = data.problem || data.error || "";
    kiosk.lastWarning = warning;
    show("notice", warning ? `Note: ${warning}` : "");
    setTimeout(() => { if (kiosk.lastWarning === warning) show("notice", ""); }, NOTICE_MS);
  } else if (event.kind === "session_end") {
    setState("closed");
  }
}

// ---- the end -------------------------------------------------------------------------------

const CLOSE_WORDS = {
  1000: "The conversation ended.",
  1001: "The server is shutting down. Try again in a moment.",
  1003: "The server refused the audio this page sent.",
  1008: "The server refused this page (token or origin).",
  1011: "The server hit an error and ended the conversation.",
  1013: "The server is full. Try again in a moment.",
  4000: "The connection was too slow to keep up, so the server dropped it.",
};

async function closed(close, opened, token) {
  kiosk.closeCode = close.code;
  kiosk.closeReason = close.reason;
  const wasStopped = conversation && conversation.stopping;
  teardown();
  setState("closed");
  if (wasStopped && close.code === 1000) {
    setState("idle"); // the user pressed Stop: nothing to explain
    return;
  }
  if (!opened) {
    // Browsers hide why an upgrade was refused; asking the same URL over plain HTTP tells.
    showProblem(await refusalInWords(token));
    return;
  }
  const words = CLOSE_WORDS[close.code] || `The connection closed (code ${close.code}).`;
  showProblem(close.reason ? `${words} Reason: ${close.reason}` : words);
}

async function refusalInWords(token) {
  try {
    const answer = await fetch(`/ws?token=${encodeURIComponent(token)}`, { cache: "no-store" });
    if (answer.status === 401) {
      $("connection").open = true; // where the token can be typed in
      return "The server refused the token. Check the token in the page address or the Connection field below.";
    }
    if (answer.status === 403) return "The server does not accept connections from this page's address (origin).";
    return `The server refused the connection (HTTP ${answer.status}).`;
  } catch (_) {
    return "Cannot reach the server. Is `edgevoice serve` running?";
  }
}

function teardown() {
  if (!conversation) return;
  const { context, stream, mic } = conversation;
  if (mic) mic.port.onmessage = null;
  if (stream) stream.getTracks().forEach((track) => track.stop());
  if (context) context.close();
  conversation = null;
  setTalking(false);
}

function stop() {
  const socket = conversation && conversation.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    teardown();
    setState("idle");
    return;
  }
  conversation.stopping = true;
  socket.send(JSON.stringify({ type: "bye" }));
  socket.close(1000, "bye");
}

// ---- wiring --------------------------------------------------------------------------------

function startOrStop() {
  if (conversation) {
    stop();
    return;
  }
  start().catch((error) => {
    teardown();
    setState("idle");
    const denied = error && error.name === "NotAllowedError";
    showProblem(denied ? "The microphone is blocked: allow it for this page and press Talk again." : String(error.message || error));
  });
}

$("token").value = new URLSearchParams(location.search).get("token") || "";
$("talk").addEventListener("click", startOrStop);
setState("idle");
