#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/<target>/ from testdata/vectors/*.hex.

    python3 fuzz/make_seeds.py

Each seed is one vector (or, for `content`, the target's input layout built
from vectors: a first byte giving the attachment count, then the body and
the attachments separated by 0xff bytes).
"""

import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "testdata", "vectors")


def load(name):
    out = {}
    with open(os.path.join(VECTORS, name)) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k.strip()] = bytes.fromhex(v.strip())
    return out


def write(target, seeds):
    d = os.path.join(HERE, "seeds", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


commands = load("commands.hex")
replies = load("replies.hex")
message = load("message.hex")
content = load("content.hex")
statements = load("statements.hex")
payload = load("payload.hex")

write("command", commands)
write(
    "reply",
    {k: v for k, v in replies.items() if k.startswith("reply_") and not k.endswith("_signed_data")}
    | {"header_success": replies["header_success"]},
)
write("message", {k: v for k, v in message.items() if not k.endswith("_hash") and not k.endswith("_input")})
write("statements", statements)
write("payload", payload)
write(
    "content",
    {
        "report": bytes([2]) + content["inner_body"] + b"\xff" + content["attachment_1"] + b"\xff" + content["attachment_2"],
        "notice": bytes([0]) + content["notice_inner_body"],
        "report_no_attachments": bytes([0]) + content["inner_body"],
    },
)
for t in sorted(os.listdir(os.path.join(HERE, "seeds"))):
    print(t, len(os.listdir(os.path.join(HERE, "seeds", t))))
