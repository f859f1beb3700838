#!/usr/bin/env node
// Drives one real pusher-js client (its Node build) for tests/conformance/test_pusher_js.py.
//
// Protocol: one JSON object per line on stdin (a command), one JSON object per line on stdout
// (an event). Every command may carry an "id"; it is answered by {"type": "ack", "id", ...} or
// {"type": "command_error", "id", "message"}. Everything pusher-js logs goes to stderr, so stdout
// carries nothing but events.
//
// Commands:
//   connect {key, host, port, authEndpoint, userAuthEndpoint, forceTLS, enabledTransports,
//            disableStats, activityTimeout?}
//   subscribe {channel}            unsubscribe {channel}
//   bind {channel, event}          bind_global {}          (on the Pusher instance)
//   trigger {channel, event, data} (client event; ack carries pusher-js's boolean result)
//   signin {}                      disconnect {}          connect_again {}
//   state {}                       members {channel}      exit {}
//
// Events (field "type"):
//   state          {previous, current, socket_id}           every connection state change
//   error          {error}                                  connection 'error' (pusher:error
//                                                           frames, close codes, ...)
//   subscription_succeeded {channel, members?}              members: {me, count, ids, hash}
//   subscription_error     {channel, error}
//   subscription_count     {channel, data}
//   member_added / member_removed {channel, member: {id, info}, members}
//   channel_event  {channel, event, data}                    every other event on a channel
//   bound_event    {channel, event, data, user_id}           events of a `bind` command
//   global_event   {event, data}                             events of `bind_global`
//   signin_success {user_data}                               pusher:signin_success seen and parsed
//   user_channel_subscribed {channel}                         the #server-to-user-<id> channel
//   user_event     {event, data}                             events on the user channel
//   watchlist      {name, user_ids}
'use strict';

const readline = require('readline');
const Pusher = require('pusher-js');

// A JSON-safe copy: Errors become {name, message, status}; functions and true cycles are dropped
// (shared, non-cyclic references such as members.me.info / members.hash[id] are kept).
function safe(value, ancestors = []) {
  if (value === undefined || typeof value === 'function') return undefined;
  if (value === null || typeof value !== 'object') return value;
  if (ancestors.includes(value)) return undefined;
  if (value instanceof Error) return { name: value.name, message: value.message, status: value.status };
  const inner = ancestors.concat([value]);
  if (Array.isArray(value)) return value.map((v) => (v === undefined ? null : safe(v, inner)));
  const out = {};
  for (const [k, v] of Object.entries(value)) {
    const copy = safe(v, inner);
    if (copy !== undefined) out[k] = copy;
  }
  return out;
}

function emit(event) {
  process.stdout.write(JSON.stringify(safe(event)) + '\n');
}

// pusher-js logs through Pusher.log when set; keep it off stdout.
Pusher.log = (message) => process.stderr.write(`[pusher-js] ${message}\n`);
for (const level of ['log', 'info', 'warn', 'error', 'debug']) {
  console[level] = (...args) => process.stderr.write(`[console.${level}] ${args.join(' ')}\n`);
}

let pusher = null;

function members(channel) {
  const m = channel.members;
  if (!m) return undefined;
  const ids = [];
  m.each((member) => ids.push(member.id));
  ids.sort();
  return { me: m.me, count: m.count, ids, hash: m.members, myID: m.myID };
}

function requirePusher() {
  if (!pusher) throw new Error('not connected: send "connect" first');
  return pusher;
}

function requireChannel(name) {
  const channel = requirePusher().channel(name);
  if (!channel) throw new Error(`no channel ${name}: subscribe first`);
  return channel;
}

const commands = {
  connect(cmd) {
    if (pusher) throw new Error('already connected');
    const options = {
      cluster: 'local', // required by pusher-js 8; unused once wsHost is set
      wsHost: cmd.host,
      wsPort: cmd.port,
      wssPort: cmd.port,
      forceTLS: cmd.forceTLS === undefined ? false : cmd.forceTLS,
      enabledTransports: cmd.enabledTransports || ['ws'],
      enableStats: cmd.disableStats === undefined ? false : !cmd.disableStats,
    };
    if (cmd.activityTimeout) options.activityTimeout = cmd.activityTimeout;
    if (cmd.authEndpoint) {
      options.channelAuthorization = { endpoint: cmd.authEndpoint, transport: 'ajax' };
    }
    if (cmd.userAuthEndpoint) {
      options.userAuthentication = { endpoint: cmd.userAuthEndpoint, transport: 'ajax' };
    }
    pusher = new Pusher(cmd.key, options);
    const connection = pusher.connection;
    connection.bind('state_change', ({ previous, current }) => {
      emit({ type: 'state', previous, current, socket_id: connection.socket_id || null });
    });
    connection.bind('error', (error) => emit({ type: 'error', error }));
    // The user facade handles pusher:signin_success before this listener runs (it bound first),
    // so by now it has parsed user_data and created the #server-to-user-<id> channel.
    connection.bind('message', (message) => {
      if (message.event !== 'pusher:signin_success') return;
      const user = pusher.user;
      emit({ type: 'signin_success', user_data: user.user_data, raw: message.data });
      const channel = user.serverToUserChannel;
      if (channel) {
        channel.bind('pusher:subscription_succeeded', () =>
          emit({ type: 'user_channel_subscribed', channel: channel.name }),
        );
      }
    });
    pusher.user.bind_global((event, data) => emit({ type: 'user_event', event, data }));
    for (const name of ['online', 'offline']) {
      pusher.user.watchlist.bind(name, (event) =>
        emit({ type: 'watchlist', name, user_ids: event.user_ids }),
      );
    }
    return {};
  },

  subscribe(cmd) {
    const channel = requirePusher().subscribe(cmd.channel);
    if (channel.__driverBound) return {};
    channel.__driverBound = true;
    const name = cmd.channel;
    channel.bind('pusher:subscription_succeeded', () =>
      emit({ type: 'subscription_succeeded', channel: name, members: members(channel) }),
    );
    channel.bind('pusher:subscription_error', (error) =>
      emit({ type: 'subscription_error', channel: name, error }),
    );
    channel.bind('pusher:subscription_count', (data) =>
      emit({ type: 'subscription_count', channel: name, data }),
    );
    channel.bind('pusher:member_added', (member) =>
      emit({ type: 'member_added', channel: name, member, members: members(channel) }),
    );
    channel.bind('pusher:member_removed', (member) =>
      emit({ type: 'member_removed', channel: name, member, members: members(channel) }),
    );
    const handled = new Set([
      'pusher:subscription_succeeded',
      'pusher:subscription_error',
      'pusher:subscription_count',
      'pusher:member_added',
      'pusher:member_removed',
    ]);
    channel.bind_global((event, data) => {
      if (!handled.has(event)) emit({ type: 'channel_event', channel: name, event, data });
    });
    return {};
  },

  unsubscribe(cmd) {
    requirePusher().unsubscribe(cmd.channel);
    return {};
  },

  bind(cmd) {
    const channel = requireChannel(cmd.channel);
    channel.bind(cmd.event, (data, metadata) =>
      emit({
        type: 'bound_event',
        channel: cmd.channel,
        event: cmd.event,
        data,
        user_id: metadata && metadata.user_id !== undefined ? metadata.user_id : null,
      }),
    );
    return {};
  },

  bind_global() {
    requirePusher().bind_global((event, data) => emit({ type: 'global_event', event, data }));
    return {};
  },

  trigger(cmd) {
    return { result: requireChannel(cmd.channel).trigger(cmd.event, cmd.data) };
  },

  signin() {
    requirePusher().signin();
    return {};
  },

  disconnect() {
    requirePusher().disconnect();
    return {};
  },

  connect_again() {
    requirePusher().connect();
    return {};
  },

  state() {
    const p = requirePusher();
    return { state: p.connection.state, socket_id: p.connection.socket_id || null };
  },

  members(cmd) {
    return { members: members(requireChannel(cmd.channel)) };
  },

  exit() {
    if (pusher) pusher.disconnect();
    setTimeout(() => process.exit(0), 50);
    return {};
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit({ type: 'command_error', id: null, message: `bad JSON: ${e.message}` });
    return;
  }
  const handler = commands[cmd.cmd];
  try {
    if (!handler) throw new Error(`unknown command ${cmd.cmd}`);
    emit(Object.assign({ type: 'ack', id: cmd.id, cmd: cmd.cmd }, handler(cmd)));
  } catch (e) {
    emit({ type: 'command_error', id: cmd.id, cmd: cmd.cmd, message: String(e && e.message) });
  }
});
// The controller closing stdin (or dying) ends the driver.
rl.on('close', () => {
  if (pusher) pusher.disconnect();
  setTimeout(() => process.exit(0), 50);
});
emit({ type: 'ready', version: require('pusher-js/package.json').version });
