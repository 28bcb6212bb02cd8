"""A stand-in judge for trying `eval mt-bench` without a judge model: an OpenAI-compatible chat-completions
server on 127.0.0.1 that rates every answer by its length (longer is better, 1-10). Not an evaluation: it shows
the pipeline working. It stops by itself after `--seconds`.

    python -m align.evaluation.stub_judge --port 8765 --seconds 600
"""

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The answer being judged: single-turn prompts frame it, multi-turn ones end the conversation with it.
ANSWER = (re.compile(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", re.DOTALL),
          re.compile(r".*### Assistant A:\n(.*)\n\n<\|The End of Assistant A's Conversation", re.DOTALL))


def judged_answer(prompt: str) -> str:
    return next((match.group(1) for pattern in ANSWER if (match := pattern.search(prompt))), prompt)


def stub_rating(prompt: str) -> int:
    return max(1, min(10, 1 + len(judged_answer(prompt).split()) // 10))


class StubJudge(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = request["messages"][-1]["content"]
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content":
                                                    f"Stub judgment. Rating: [[{stub_rating(prompt)}]]"}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):  # quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), StubJudge)
    threading.Timer(args.seconds, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
