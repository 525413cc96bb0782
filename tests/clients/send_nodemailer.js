// Send one matrix scenario with nodemailer: node send_nodemailer.js SPEC.json
"use strict";
const fs = require("fs");
const path = require("path");
const nodemailer = require("nodemailer");

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const transporter = nodemailer.createTransport({
  host: "127.0.0.1",
  port: spec.port,
  secure: false,
  ignoreTLS: true,
  name: "client.test",
});
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
