// Prints the telemetry and events of a Ferry tenant: a minimal rhea (Node.js, `npm install rhea`) application.
//
//   [CA=ca.crt] node consumer.js amqps://USER:PASSWORD@HOST:PORT ADDRESS...
//   node consumer.js amqp://USER:PASSWORD@HOST:PORT ADDRESS...
//
// amqps:// is AMQP over TLS (the router's port 5671); CA names the PEM file to verify the router against.
// ADDRESS is telemetry/TENANT or event/TENANT; USER and PASSWORD are an application user of the tenant.
// Prints "attached ADDRESS" on stderr once a link is open, then one line per message: address, device id,
// content type and payload. Set COUNT=N to stop after N messages.
'use strict';
const rhea = require('rhea');

const [url, ...addresses] = process.argv.slice(2);
if (!url || addresses.length === 0) {
    console.error('usage: [CA=ca.crt] node consumer.js amqps://USER:PASSWORD@HOST:PORT ADDRESS...');
    process.exit(2);
}
const u = new URL(url);
const count = Number(process.env.COUNT || 0);
let received = 0;

const tls = u.protocol === 'amqps:';
const connection = rhea.connect({
    host: u.hostname,
    port: Number(u.port || (tls ? 5671 : 5672)),
    username: decodeURIComponent(u.username), // SASL PLAIN
    password: decodeURIComponent(u.password),
    reconnect: false,
    ...(tls && {
        transport: 'tls',
        servername: u.hostname,
        ...(process.env.CA && { ca: [require('fs').readFileSync(process.env.CA)] }),
    }),
});
for (const address of addresses) {
    connection.open_receiver({ source: address }); // auto-accepts each message
}

rhea.on('receiver_open', (context) => console.error('attached ' + context.receiver.source.address));
rhea.on('message', (context) => {
    const message = context.message;
    let body = message.body;
    if (body && body.typecode === 0x75) body = body.content; // a Data section
    if (Buffer.isBuffer(body)) body = body.toString('utf8');
    const device = (message.application_properties || {}).device_id;
    console.log(`${context.receiver.source.address} ${device} ${message.content_type} ${body}`);
    if (count && ++received >= count) context.connection.close();
});
rhea.on('receiver_error', (context) => {
    console.error('link refused: ' + JSON.stringify(context.receiver.error));
    process.exitCode = 1;
    context.connection.close();
});
rhea.on('disconnected', (context) => {
    if (context.error) {
        console.error('disconnected: ' + context.error);
        process.exitCode = 1;
    }
});
