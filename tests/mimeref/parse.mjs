// Reference parse for tests/test_differential.py: postal-mime (a MIME parser written
// independently of Python's email package) over many files in ONE node process.
// Input: a JSON array of file paths on stdin. Output: a JSON object path -> summary
// (or {"error": message}) on stdout.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import PostalMime from "postal-mime";

// Hashed with LF line breaks, trailing ones removed: postal-mime turns CRLF into LF in
// parts that are not base64 and keeps the line break before a boundary, which RFC 2046
// gives to the delimiter. tests/differential.py hashes the relay's bytes the same way.
const trimmed = (bytes) =>
  Buffer.from(bytes).toString("latin1").replace(/\r\n/g, "\n").replace(/[\r\n]+$/, "");
const sha256 = (bytes) => createHash("sha256").update(Buffer.from(trimmed(bytes), "latin1")).digest("hex");
// As SMTP delivers it: every line break CRLF.
const crlf = (raw) => Buffer.from(raw.toString("latin1").replace(/\r?\n/g, "\r\n"), "latin1");
const box = (a) => (a && a.address !== undefined ? { name: a.name || "", email: a.address || "" } : null);
const boxes = (list) => (list || []).flatMap((a) => (a.group ? a.group.map(box) : [box(a)])).filter(Boolean);

async function summary(path) {
  const email = await PostalMime.parse(crlf(readFileSync(path)), { rfc822Attachments: true, forceRfc822Attachments: true });
  return {
    subject: email.subject ?? "",
    from: box(email.from),
    to: boxes(email.to),
    cc: boxes(email.cc),
    text: email.text ?? null,
    html: email.html ?? null,
    attachments: email.attachments.map((a) => ({
      filename: a.filename,
      mimeType: a.mimeType,
      disposition: a.disposition,
      contentId: a.contentId ?? null,
      related: Boolean(a.related),
      sha256: sha256(a.content),
    })),
  };
}

const paths = JSON.parse(readFileSync(0, "utf8"));
const out = {};
for (const path of paths) {
  try {
    out[path] = await summary(path);
  } catch (error) {
    out[path] = { error: String(error && error.message ? error.message : error) };
  }
}
process.stdout.write(JSON.stringify(out));
