"""The tokenizer conformance corpus: named texts (str) and raw byte strings (bytes, for the
invalid-UTF-8 cases). Imported by gen_tokenizer_fixtures.py; the bench reads the fixture."""
import random
import unicodedata

CHINESE_ARTICLE = """分页注意力机制与大语言模型推理服务

一、背景
大语言模型（LLM）的推理过程分为两个阶段：预填充（prefill）阶段一次性处理全部提示词，计算密集；解码（decode）阶段每一步只生成一个新的词元，受显存带宽限制。解码阶段需要读取此前所有词元的键值缓存（KV Cache），其大小随序列长度线性增长。以 Qwen3-8B 为例，每个词元在 36 层、8 个键值头、128 维的配置下，使用 BF16 精度时约占 144 KiB 显存。

二、问题
传统实现为每个请求按最大长度预先分配连续显存，导致严重的内部碎片与外部碎片：实际生成长度往往远小于上限，浪费比例可达 60%～80%。同时，不同请求之间无法共享相同前缀（例如系统提示词），重复计算与重复存储进一步降低了吞吐量。

三、方法
分页注意力（PagedAttention）借鉴操作系统的虚拟内存思想：把 KV 缓存切分为固定大小的块（例如每块 16 个词元），用块表（block table）记录逻辑块到物理块的映射。注意力内核按块表间接寻址，因此物理块无需连续。块的分配与回收由调度器统一管理；当显存不足时，可以抢占低优先级请求，将其块换出到主机内存或直接丢弃并在之后重新计算。
前缀缓存（prefix caching）对完整块的内容计算哈希值，哈希相同的块直接复用，引用计数归零后进入最近最少使用（LRU）队列，等待被淘汰。

四、实现要点
1. 连续批处理（continuous batching）：每个调度步骤都可以加入新请求、移除已完成的请求，而不必等待整批结束。
2. 分块预填充（chunked prefill）：把长提示词拆成若干片段，与解码请求混合在同一步中执行，降低首词元延迟的抖动。
3. CUDA Graph：解码步骤的形状固定时，捕获计算图以减少内核启动开销；批大小取 1、2、4、8、16……的若干档位。
4. 采样：温度、top-k、top-p、min-p、重复惩罚等参数按请求独立设置，随机数种子保证结果可复现。

五、实验结果
在单张 H100 上，使用 256 个并发请求、平均输入 512 个词元、平均输出 256 个词元的负载，吞吐量达到每秒 1.2 万个输出词元，比朴素实现提高约 3.5 倍；P99 首词元延迟为 850 毫秒。显存利用率从 38% 提升到 91%。

六、结论
分页管理让 KV 缓存的利用率接近理论上限，是现代推理引擎（如 vLLM、SGLang、TensorRT-LLM）的共同基础。后续工作包括投机解码（speculative decoding）、多卡张量并行以及 FP8 量化的键值缓存。"""

JAPANESE = """東京は日本の首都であり、世界最大級の都市圏を形成しています。ひらがな、カタカナ、漢字が混在する日本語の文章は、トークナイザーにとって興味深いテストケースです。「こんにちは、世界！」と彼は言った。半角ｶﾀｶﾅや全角ＡＢＣ１２３も含めます。"""

KOREAN = """한국어는 한글이라는 고유한 문자 체계를 사용합니다. 대규모 언어 모델의 추론 속도를 높이기 위해 페이지드 어텐션을 사용합니다. 안녕하세요, 반갑습니다!"""

ARABIC = """اللغة العربية هي إحدى أكثر اللغات انتشاراً في العالم، ويتحدث بها أكثر من ٤٠٠ مليون شخص. النماذج اللغوية الكبيرة تتطلب ذاكرة كبيرة. مرحباً بالعالم!"""

CODE_PY = '''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out


if __name__ == "__main__":
    print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
'''

CODE_CPP = '''#include <vector>
template <class T>
struct Span { T* data; std::size_t size; };
int main(int argc, char** argv) {
\tstd::vector<int> v{1, 2, 3};
\tfor (auto& x : v) x *= 2;   // double
\treturn v.size() == 3 ? 0 : 1;
}
'''

CODE_RUST = '''fn main() {
    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();
    println!("{:?}", xs);
    match xs.get(3) { Some(&v) => eprintln!("v={v}"), None => {} }
}
'''

CODE_JS = '''const fetchJson = async (url) => {
  const res = await fetch(url, { headers: { "Accept": "application/json" } });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return res.json();
};
'''

CODE_SQL = "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id\r\nWHERE o.created_at >= '2024-01-01' GROUP BY u.id HAVING n > 10 ORDER BY n DESC;\r\n"

ENGLISH = """The quick brown fox jumps over the lazy dog. Large language models generate text one token at a time; each step reads the whole key-value cache. It's a memory-bound workload, isn't it? "Quoted text", (parenthesised), [bracketed] and {braced} — with em-dashes – en-dashes… and ellipses. E-mail: someone@example.com, URL: https://example.com/a/b?c=d&e=f#g."""

CONTRACTIONS = """I'm sure you're right: he's here, they've left, we'll see, I'd go, it's fine, don't, can't, won't.
I'M SURE YOU'RE RIGHT: HE'S HERE, THEY'VE LEFT, WE'LL SEE, I'D GO, IT'S FINE, DON'T, CAN'T.
Mixed: It'S, You'Re, We'Ll, They'Ve, I'M, he'D, don'T. Long s: 'ſ 'ſt Kelvin: 'K 'k."""

EMOJI = "Family: 👨\u200d👩\u200d👧\u200d👦, coder: 👩🏽\u200d💻, flag: 🏳️\u200d🌈, thumbs: 👍🏿👍🏻👍, hearts: ❤️🧡💛, keycap: 1️⃣ #️⃣, flags: 🇯🇵🇺🇸🇩🇪, ZWJ chain: 🧑\u200d🤝\u200d🧑 😀😃😄"

NFC_TEXT = "Café naïve résumé Ångström Tiếng Việt Phở ñandú Zoë Œuvre ǅ Ω K Å"
NFD_TEXT = unicodedata.normalize("NFD", NFC_TEXT) + " " + unicodedata.normalize("NFD", "한국어 안녕하세요")
MIXED_MARKS = "e\u0301\u0323 a\u0323\u0301 o\u0308\u0304 q\u0307\u0323 \u1100\u1161\u11a8 \u0915\u093c \u05d1\u05bc\u05b7 \u212b \u2126 \u0344 \u0f73"

WHITESPACE = [
    " " * 200 + "x",
    "\t" * 40 + "tabs",
    "a" + " " * 5000 + "b",
    "line1\r\nline2\r\n\r\n\r\nline3\n\n\n   \n  indented\r\n",
    "trailing spaces   \n   leading\n\t\t\n \u3000\u3000full-width\u00a0nbsp \u2028ls \u2029ps \u0085nel \u180emvs \u200bzwsp \ufeffbom",
    "\n" * 50,
    "   ",
    "",
]

DIGITS = "1234567890" * 12 + " 3.14159265358979 1,000,000 2024-06-01 12:34:56 +1 (555) 123-4567 0x1F 1e-9 ٠١٢٣٤٥٦٧٨٩ ①②③ ⅷ"

SPECIAL = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning here\n</think>\n\nanswer<|endoftext|>",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><tool_response>ok</tool_response>",
    "<|im_start<|im_end|>> <<|endoftext|>> <think</think> <|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>",
    "text<|endoftext|><|endoftext|>text<|vision_start|><|image_pad|><|vision_end|>",
]

INVALID = [
    b"\xff\xfe plain",
    b"trunc \xe4\xb8",
    b"overlong \xc0\xaf and \xe0\x80\xaf",
    b"surrogate \xed\xa0\x80 x",
    b"too big \xf4\x90\x80\x80 y",
    b"\x80\x80\x80 lone continuations",
    b"mixed \xe4\xb8\xad\xe6\x96 \xf0\x9f\x98 end \xf0\x9f\x98\x80",
    b"<|im_end|>\xfe<think>",
]


def random_texts(n=300, seed=1234):
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789٠١٢",
        " \t\n\r\u00a0\u3000",
        ".,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`",
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
        "あいうえおカキクケコ漢字",
        "한국어가나다",
        "مرحبا",
        "\u0301\u0308\u0323\u0304\u093c",
        "éñüÅΩ",
        "😀👍🏽\u200d👨👩🇯🇵",
    ]
    words = ["'s", "'T", "'re", "'VE", "'m", "'ll", "'D", "<|im_start|>", "<|im_end|>", "<think>",
             "</think>", "<|endoftext|>", "\r\n", "    ", "hello", "world", "1234"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 60)
        parts = []
        for _ in range(k):
            if rng.random() < 0.15:
                parts.append(rng.choice(words))
            else:
                parts.append(rng.choice(rng.choice(pools)))
        out.append("".join(parts))
    return out


def corpus():
    """[(name, str | bytes)] in a fixed order."""
    items = [
        ("english", ENGLISH),
        ("chinese_article", CHINESE_ARTICLE),
        ("japanese", JAPANESE),
        ("korean", KOREAN),
        ("arabic", ARABIC),
        ("emoji", EMOJI),
        ("nfc", NFC_TEXT),
        ("nfd", NFD_TEXT),
        ("combining_marks", MIXED_MARKS),
        ("code_python", CODE_PY),
        ("code_cpp", CODE_CPP),
        ("code_rust", CODE_RUST),
        ("code_js", CODE_JS),
        ("code_sql_crlf", CODE_SQL),
        ("contractions", CONTRACTIONS),
        ("digits", DIGITS),
        ("long_words", "supercalifragilisticexpialidocious" * 6 + " " + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 8
         + " Pneumonoultramicroscopicsilicovolcanoconiosis" * 3 + " " + "的" * 100),
    ]
    items += [(f"whitespace_{i}", t) for i, t in enumerate(WHITESPACE)]
    items += [(f"special_{i}", t) for i, t in enumerate(SPECIAL)]
    items += [(f"invalid_utf8_{i}", t) for i, t in enumerate(INVALID)]
    items += [(f"random_{i}", t) for i, t in enumerate(random_texts())]
    return items
