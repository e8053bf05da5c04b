"""Think mode for chat: a system prompt that asks for `<think>...</think>` first, and the parser that
splits the answer into thought and reply, also incrementally while streaming.

(Image think mode needs none of this: the pipeline writes the thought itself and returns it.)
"""

from __future__ import annotations

from ..constants import SYSTEM_TEXT, THINK_END_TOKEN, THINK_START_TOKEN

THINK_INSTRUCTION = (
    "Before answering, think the problem through step by step. Write that reasoning between "
    f"{THINK_START_TOKEN} and {THINK_END_TOKEN}, then give the final answer after {THINK_END_TOKEN}."
)


def think_system_prompt(system_prompt: str | None) -> str:
    """The request's system prompt (default: the model's) followed by the think instruction."""
    return f"{system_prompt or SYSTEM_TEXT}\n\n{THINK_INSTRUCTION}"


def split_thought(text: str) -> tuple[str | None, str]:
    """Whole answer -> (thought or None, reply). Same rule as `ThinkSplitter`."""
    splitter = ThinkSplitter()
    thought, reply = splitter.feed(text)
    t2, r2 = splitter.close()
    thought, reply = thought + t2, reply + r2
    return (thought.strip() if splitter.saw_thought else None), reply.strip() if splitter.saw_thought else reply


class ThinkSplitter:
    """Streamed text -> (thought delta, reply delta) pairs.

    The answer is a thought only if it starts (after whitespace) with `<think>`; it lasts until
    `</think>` (or the end). Text that may still turn into a tag is held back until it can't.
    """

    def __init__(self) -> None:
        self.state = "start"  # start -> thinking -> reply
        self.buffer = ""
        self.saw_thought = False

    def feed(self, piece: str) -> tuple[str, str]:
        self.buffer += piece
        thought, reply = "", ""
        while True:
            if self.state == "start":
                stripped = self.buffer.lstrip()
                if stripped.startswith(THINK_START_TOKEN):
                    self.state, self.saw_thought = "thinking", True
                    self.buffer = stripped[len(THINK_START_TOKEN):]
                    continue
                if THINK_START_TOKEN.startswith(stripped):
                    return thought, reply  # maybe the start of "<think>": wait
                self.state = "reply"
                continue
            if self.state == "thinking":
                idx = self.buffer.find(THINK_END_TOKEN)
                if idx >= 0:
                    thought += self.buffer[:idx]
                    self.buffer = self.buffer[idx + len(THINK_END_TOKEN):].lstrip()
                    self.state = "reply"
                    continue
                keep = _partial_suffix(self.buffer, THINK_END_TOKEN)
                thought += self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return thought, reply
            reply += self.buffer
            self.buffer = ""
            return thought, reply

    def close(self) -> tuple[str, str]:
        """Flush what was held back."""
        rest, self.buffer = self.buffer, ""
        if self.state == "thinking":
            return rest, ""
        return "", rest


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
