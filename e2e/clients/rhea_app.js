// A business application written with rhea (Node.js AMQP 1.0), for Ferry's end-to-end stories.
//
// Usage:
//   node rhea_app.js consume URL ADDRESS COUNT TIMEOUT
//       receive COUNT messages from ADDRESS (e.g. telemetry/TENANT), accepting each
//   node rhea_app.js consume-raw URL ADDRESS COUNT TIMEOUT
//       the same, and each message also carries "raw": the hex of the whole encoded message as it came
//       off the wire (the payloads of the delivery's transfer frames, concatenated), before rhea decoded it
//   node rhea_app.js command URL TENANT DEVICE NAME PAYLOAD TIMEOUT
//       send a request/response command to DEVICE, again while it is `released` (device not reachable
//       yet), and wait for the device's response
//   node rhea_app.js send URL ADDRESS TIMEOUT
//       attach a sender to ADDRESS (to see whether the router lets this user send there)
//
// URL is amqp://USER:PASSWORD@HOST:PORT (SASL PLAIN). Prints one JSON object a line, the same as
// proton_app.py: {"attached": ...}, {"message": {...}}, {"link_error": ...}, {"outcome": ...},
// {"response": {...}}, and last {"done": N} or {"timeout": true, "got": N}.
'use strict';

const rhea = require('rhea');

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function text(body) {
    if (body && body.typecode === 0x75) body = body.content; // a Data section
    if (Buffer.isBuffer(body)) return body.toString('utf8');
    return body === undefined ? null : body;
}

function describe(m) {
    return {
        body: text(m.body),
        content_type: m.content_type === undefined ? null : m.content_type,
        to: m.to === undefined ? null : m.to,
        durable: !!m.durable,
        creation_time: m.creation_time === undefined ? null : new Date(m.creation_time).getTime(),
        correlation_id: m.correlation_id === undefined ? null : m.correlation_id,
        properties: m.application_properties || {},
        annotations: m.message_annotations || {},
    };
}

function open(url) {
    const u = new URL(url);
    const container = rhea.create_container({ id: 'rhea-e2e-' + process.pid });
    const connection = container.connect({
        host: u.hostname,
        port: Number(u.port),
        username: decodeURIComponent(u.username),
        password: decodeURIComponent(u.password),
        reconnect: false,
    });
    connection.on('connection_error', (ctx) => {
        const e = ctx.connection.error || {};
        emit({ connection_error: e.condition || null, description: e.description || null });
        process.exit(1);
    });
    connection.on('disconnected', (ctx) => {
        if (!closing) {
            emit({ disconnected: ctx.error ? String(ctx.error) : null });
            process.exit(1);
        }
    });
    return connection;
}

let closing = false;
function finish(connection, obj) {
    emit(obj);
    closing = true;
    connection.close();
    connection.on('connection_close', () => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
}

function timeout(seconds, got) {
    setTimeout(() => {
        emit({ timeout: true, got: got() });
        process.exit(0);
    }, seconds * 1000);
}

function linkError(connection, ctx) {
    const e = ctx.receiver ? ctx.receiver.error : ctx.sender.error;
    finish(connection, { link_error: e ? e.condition : null, description: e ? e.description || null : null });
}

function consume(url, address, count, seconds, raw) {
    const connection = open(url);
    let got = 0;
    timeout(Number(seconds), () => got);
    const receiver = connection.open_receiver({ source: address, autoaccept: false });
    receiver.on('receiver_open', () => emit({ attached: address }));
    receiver.on('receiver_error', (ctx) => linkError(connection, ctx));
    receiver.on('message', (ctx) => {
        const message = describe(ctx.message);
        if (raw) message.raw = raw().toString('hex');
        emit({ message });
        ctx.delivery.accept();
        got += 1;
        if (got >= Number(count)) finish(connection, { done: got });
    });
}

// rhea hands an application only the decoded message: its session concatenates a delivery's transfer
// payloads and calls `message.decode` on them (lib/session.js, Incoming.on_transfer), then emits
// 'message' at once. Wrapping that decode keeps those bytes; the 'message' handler takes them.
function consumeRaw(url, address, count, seconds) {
    const decode = rhea.message.decode;
    let last = null;
    rhea.message.decode = (buffer) => {
        last = Buffer.from(buffer);
        return decode(buffer);
    };
    consume(url, address, count, seconds, () => {
        const bytes = last;
        last = null;
        if (!bytes) throw new Error('a message that did not go through rhea.message.decode');
        return bytes;
    });
}

function command(url, tenant, device, name, payload, seconds) {
    const connection = open(url);
    const reply = `command_response/${tenant}/rhea-${device}`;
    let accepted = false;
    let responded = false;
    let attempt = 0;
    timeout(Number(seconds), () => (responded ? 1 : 0));
    const done = () => {
        if (accepted && responded) finish(connection, { done: 1 });
    };
    // Credit for the response before the command goes out: the flow frame follows the attach at once
    // (rhea's default window would grant it only once the router's attach came back, which may be after
    // the device already answered; the router releases a response that finds no credit).
    // LATE_CREDIT_MS=N grants it only N ms after the command went out instead (a slow application).
    const late = Number(process.env.LATE_CREDIT_MS || 0);
    const receiver = connection.open_receiver({ source: reply, autoaccept: false, credit_window: 0 });
    if (!late) receiver.add_credit(10);
    const sender = connection.open_sender({ target: `command/${tenant}` });
    const send = () => {
        attempt += 1;
        sender.send({
            to: `command/${tenant}/${device}`,
            subject: name,
            message_id: `cmd-${attempt}`,
            reply_to: reply,
            content_type: 'application/json',
            body: rhea.message.data_section(Buffer.from(payload, 'utf8')),
        });
        if (late && attempt === 1) setTimeout(() => receiver.add_credit(10), late);
    };
    let ready = 0;
    const start = () => {
        ready += 1;
        if (ready === 2) send();
    };
    receiver.on('receiver_open', () => {
        emit({ attached: reply });
        start();
    });
    sender.once('sendable', start);
    receiver.on('receiver_error', (ctx) => linkError(connection, ctx));
    sender.on('sender_error', (ctx) => linkError(connection, ctx));
    sender.on('accepted', () => {
        emit({ outcome: 'accepted', attempt });
        accepted = true;
        done();
    });
    sender.on('released', () => {
        emit({ outcome: 'released', attempt });
        setTimeout(send, 200);
    });
    sender.on('rejected', () => finish(connection, { outcome: 'rejected', attempt }));
    receiver.on('message', (ctx) => {
        emit({ response: describe(ctx.message) });
        ctx.delivery.accept();
        responded = true;
        done();
    });
}

function send(url, address, seconds) {
    const connection = open(url);
    timeout(Number(seconds), () => 0);
    const sender = connection.open_sender({ target: address });
    sender.on('sender_open', () => finish(connection, { attached: address }));
    sender.on('sender_error', (ctx) => linkError(connection, ctx));
}

const [mode, ...args] = process.argv.slice(2);
const modes = { consume, 'consume-raw': consumeRaw, command, send };
if (!modes[mode]) {
    process.stderr.write(`unknown mode ${mode}; one of ${Object.keys(modes).join(', ')}\n`);
    process.exit(2);
}
modes[mode](...args);
