import { readFileSync } from "node:fs";
import PostalMime from "postal-mime";
const e = await PostalMime.parse(Buffer.from(readFileSync(process.argv[2]).toString("latin1").replace(/\r?\n/g,"\r\n"),"latin1"), { rfc822Attachments: true });
for (const a of e.attachments) console.log(a.filename, a.mimeType, JSON.stringify(Buffer.from(a.content).toString("latin1").slice(0, Number(process.argv[3] || 300))), Buffer.from(a.content).length);
