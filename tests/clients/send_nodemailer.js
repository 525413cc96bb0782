// Send one matrix scenario with nodemailer: node send_nodemailer.js SPEC.json
"use strict";
const fs = require("fs");
const path = require("path");
const nodemailer = require("nodemailer");

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const options = {
  host: "127.0.0.1",
  port: spec.port,
  secure: false,
  ignoreTLS: true,
  name: "client.test",
};
if (spec.tls) {
  // A relay with AUTH and TLS: STARTTLS required (or implicit TLS), the CA trusted.
  Object.assign(options, {
    secure: spec.tls.implicit,
    ignoreTLS: false,
    requireTLS: !spec.tls.implicit,
    auth: { user: spec.tls.user, pass: spec.tls.password },
    tls: { ca: [fs.readFileSync(spec.tls.ca)] },
  });
}
const transporter = nodemailer.createTransport(options);
const message = {
  from: `"Matrix App" <${spec.from}>`,
  to: spec.to,
  subject: spec.subject,
  text: spec.text,
  attachments: spec.files.map((file) => ({ path: file, filename: path.basename(file) })),
};
if (spec.cc.length) message.cc = spec.cc;
if (spec.bcc.length) message.bcc = spec.bcc;
if (spec.html) {
  message.html = spec.html;
  message.attachments.push({ path: spec.inline, filename: "logo.png", cid: spec.cid });
}
transporter.sendMail(message).then(
  (info) => console.log(info.response),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
