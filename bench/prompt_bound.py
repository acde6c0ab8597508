"""`python -m bench.prompt_bound`: how many bytes of a request body a prompt token takes, per kind
of text — what the token budget's prompt bound (`extproc.stages.budget.prompt_tokens_bound`, one
token per body byte) was chosen from.

Each text is sent as one user message after a short system prompt, in a compact OpenAI Chat
Completions body. Tokens are counted with OpenAI's o200k_base and cl100k_base (chat framing
included, `TokenCounter.count_messages`) and with Llama 2's SentencePiece tokenizer (the one the
`wordllama` wheel ships; text only, plus the same framing). The table shows the body's bytes per
token for the tokenizer that needs the most tokens, and whether bytes/3, bytes/2 and bytes/1
stay at or above every count.
"""

from __future__ import annotations

import base64
import importlib.resources
import math
import random
import string
from collections.abc import Callable

import orjson
from tokenizers import Tokenizer

from extproc.stages.budget import prompt_tokens_bound
from extproc.token_count import REPLY_PRIMING, TOKENS_PER_MESSAGE, TokenCounter

SYSTEM = "You are a helpful assistant."


def texts(rng: random.Random) -> dict[str, str]:
    english = (
        "Please summarise the attached quarterly report, focusing on revenue growth, churn and "
        "the outlook for next year. The quick brown fox jumps over the lazy dog. "
    ) * 30
    records = [
        {"id": i, "name": f"item-{i}", "price": i * 1.25, "tags": ["a", "b"]} for i in range(200)
    ]
    return {
        "English prose": english,
        "Python source": "".join(
            f"def f{i}(x: int) -> int:\n    return x * {i} + {i % 7}\n\n" for i in range(150)
        ),
        "JSON records": orjson.dumps(records).decode(),
        "Chinese": (
            "我们需要在下周之前完成这个项目的所有测试工作，"  # noqa: RUF001 (Chinese punctuation)
            "并且确保系统在高并发情况下依然稳定运行。"
        )
        * 30,
        "Japanese": "東京の天気は明日晴れるでしょうか。会議の資料を準備してください。" * 30,
        "Russian": "Пожалуйста, кратко изложите прилагаемый квартальный отчёт, обращая внимание на "
        "рост выручки. " * 20,
        "Hindi": "कृपया संलग्न त्रैमासिक रिपोर्ट का सारांश दें, राजस्व वृद्धि पर ध्यान केंद्रित करते हुए। " * 20,
        "Arabic": "يرجى تلخيص التقرير الفصلي المرفق مع التركيز على نمو الإيرادات. " * 20,
        "Thai": "กรุณาสรุปรายงานรายไตรมาสที่แนบมา โดยเน้นการเติบโตของรายได้ " * 20,
        "emoji": "🎉👍🏽🚀🔥💯🧑‍💻🇩🇪" * 100,
        "digits": " ".join(str(rng.randint(0, 9)) for _ in range(3_000)),
        "random ASCII": "".join(rng.choice(string.printable[:94]) for _ in range(6_000)),
        "base64": base64.b64encode(rng.randbytes(4_500)).decode(),
        "hex": rng.randbytes(3_000).hex(),
        "rare CJK": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(2_000)),
        "CJK extension B": "".join(chr(rng.randint(0x20000, 0x2A6DF)) for _ in range(1_000)),
    }


def llama_counter() -> Callable[[str], int]:
    """Llama 2's tokenizer, from the file the wordllama wheel ships."""
    path = importlib.resources.files("wordllama") / "tokenizers/l2_supercat_tokenizer_config.json"
    tokenizer = Tokenizer.from_str(path.read_text())

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def main() -> None:
    counter = TokenCounter()
    counter.load("o200k_base")
    counter.load("cl100k_base")
    llama = llama_counter()
    framing = REPLY_PRIMING + 2 * TOKENS_PER_MESSAGE
    print(
        f"{'text':16} {'bytes':>6} {'o200k':>6} {'cl100k':>6} {'llama2':>6} {'B/tok':>6}  /3 /2 /1"
    )
    for name, text in texts(random.Random(1)).items():
        request = {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": text},
            ],
        }
        body = orjson.dumps(request)
        counts = (
            counter.count_messages("gpt-4o", request),
            counter.count_messages("gpt-4", request),
            llama(SYSTEM) + llama(text) + framing,
        )
        most = max(counts)
        holds = ["yes" if math.ceil(len(body) / d) >= most else "NO" for d in (3, 2)] + [
            "yes" if prompt_tokens_bound(body) >= most else "NO"
        ]
        print(
            f"{name:16} {len(body):6} {counts[0]:6} {counts[1]:6} {counts[2]:6} "
            f"{len(body) / most:6.2f}  {' '.join(f'{h:>3}' for h in holds)}"
        )


if __name__ == "__main__":
    main()
