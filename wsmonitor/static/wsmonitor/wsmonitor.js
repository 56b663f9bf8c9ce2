/*
 * wsmonitor.js: a small dependency-free WebSocket client for wsmonitor servers.
 *
 *   var ws = WSMonitor.connect("/ws/chat/lobby/", {
 *     json: true,
 *     onmessage: function (data) { ... },        // heartbeat pings never get here
 *     onopen: function (info) { ... },           // info.attempts: attempts this (re)connect took
 *     onclose: function (event, retryInMs) { ... }
 *   });
 *   ws.send({message: "hi"});                    // JSON objects carry the page's trace context, if any
 *   ws.close();                                  // 1000, and no reconnect
 *
 * - Answers the server's heartbeat pings ({"type": "wsmonitor.ping", "id": n} -> wsmonitor.pong,
 *   or prefix frames such as "ping:7" -> "pong:7" with options.heartbeatFrames = ["ping:", "pong:"]).
 * - Reconnects after any close it did not ask for, with exponential backoff and jitter; each
 *   attempt carries ?reconnect=<n>, so the server counts ws_client_reconnects_total by attempts.
 * - Trace context: only a real one. options.traceparent is a W3C traceparent string, or a function
 *   returning one (or null), e.g. from the page's own tracing library; without it, the content of
 *   <meta name="traceparent"> if the server rendered one. It goes on the connect URL
 *   (?traceparent=...) and into JSON objects that carry none. With none, nothing is sent and the
 *   server's sampler decides: the client never invents a parent nor forces the sampled flag.
 */
(function (root) {
  "use strict";

  var PING = '{"type":"wsmonitor.ping"';

  var TRACEPARENT = /^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;

  /** The page's trace context from <meta name="traceparent">, or null. */
  function metaTraceparent() {
    var doc = root.document;
    var meta = doc && doc.querySelector ? doc.querySelector('meta[name="traceparent"]') : null;
    return meta ? meta.getAttribute("content") : null;
  }

  /** A valid W3C traceparent from options.traceparent (string or function) or the page; else null. */
  function currentTraceparent(option) {
    if (option === false) return null;
    var value = typeof option === "function" ? option() : (option || metaTraceparent());
    return typeof value === "string" && TRACEPARENT.test(value) && value.slice(0, 2) !== "ff" ? value : null;
  }

  function absolute(url) {
    if (/^wss?:\/\//.test(url)) return url;
    var scheme = root.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + root.location.host + (url.charAt(0) === "/" ? "" : "/") + url;
  }

  function withParams(url, params) {
    var parts = [];
    for (var key in params) {
      if (params[key] !== null && params[key] !== undefined) {
        parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(params[key]));
      }
    }
    if (!parts.length) return url;
    return url + (url.indexOf("?") === -1 ? "?" : "&") + parts.join("&");
  }

  function Client(url, options) {
    this.url = absolute(url);
    this.options = options = options || {};
    this.json = !!options.json;
    this.frames = options.heartbeatFrames || null;
    this.initialDelay = options.initialDelay || 500;       // ms before the first retry (about)
    this.maxDelay = options.maxDelay || 30000;             // ms, cap of the backoff
    this.retry = options.retry || function (event) {      // which closes to retry after
      return event.code !== 1008 && event.code !== 1003;   // policy / unacceptable data: no
    };
    this.attempts = 0;      // attempts since the last successful open
    this.reconnects = 0;    // successful reconnects of this client
    this.socket = null;
    this.closed = false;
    this.timer = null;
    this.traceparent = null;
    this.open();
  }

  Client.prototype.open = function () {
    var self = this;
    this.attempts += 1;
    this.traceparent = currentTraceparent(this.options.traceparent);
    var url = withParams(this.url, {
      reconnect: this.hasOpened ? this.attempts : null,
      traceparent: this.traceparent
    });
    var socket = this.socket = new WebSocket(url);
    socket.onopen = function (event) {
      var attempts = self.attempts;
      if (self.hasOpened) self.reconnects += 1;
      self.hasOpened = true;
      self.attempts = 0;
      if (self.options.onopen) self.options.onopen({attempts: attempts, event: event});
    };
    socket.onmessage = function (event) {
      if (self.answer(event.data)) return;
      if (!self.options.onmessage) return;
      var data = event.data;
      if (self.json && typeof data === "string") {
        try { data = JSON.parse(data); } catch (error) { /* hand over the text */ }
      }
      self.options.onmessage(data, event);
    };
    socket.onclose = function (event) {
      if (self.socket !== socket) return;
      var delay = null;
      if (!self.closed && self.retry(event)) {
        // Exponential backoff with "equal jitter": half fixed, half random.
        var base = Math.min(self.maxDelay, self.initialDelay * Math.pow(2, Math.max(0, self.attempts - 1)));
        delay = Math.round(base / 2 + Math.random() * base / 2);
        self.timer = setTimeout(function () { self.timer = null; self.open(); }, delay);
      }
      if (self.options.onclose) self.options.onclose(event, delay);
    };
  };

  /** Answer a heartbeat ping; true if ``data`` was one. */
  Client.prototype.answer = function (data) {
    if (typeof data !== "string" || data.length > 128) return false;
    var id = null;
    if (this.frames) {
      if (data.indexOf(this.frames[0]) !== 0) return false;
      id = data.slice(this.frames[0].length);
      if (!/^[0-9]+$/.test(id)) return false;
      this.socket.send(this.frames[1] + id);
      return true;
    }
    if (data.indexOf(PING) !== 0) return false;
    try { id = JSON.parse(data).id; } catch (error) { return false; }
    this.socket.send(JSON.stringify({type: "wsmonitor.pong", id: id}));
    return true;
  };

  /** Send a message; JSON objects get the current trace context unless they carry one. False if not open. */
  Client.prototype.send = function (data) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    if (data !== null && typeof data === "object" && !(data instanceof ArrayBuffer) &&
        !(root.Blob && data instanceof Blob) && !ArrayBuffer.isView(data)) {
      var context = "traceparent" in data ? null : currentTraceparent(this.options.traceparent);
      if (context) {
        var copy = {};
        for (var key in data) copy[key] = data[key];
        copy.traceparent = context;
        data = copy;
      }
      data = JSON.stringify(data);
    }
    this.socket.send(data);
    return true;
  };

  /** Close for good: no reconnect. */
  Client.prototype.close = function (code, reason) {
    this.closed = true;
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    if (this.socket) this.socket.close(code || 1000, reason);
  };

  root.WSMonitor = {
    connect: function (url, options) { return new Client(url, options); },
    Client: Client
  };
})(typeof window !== "undefined" ? window : this);
