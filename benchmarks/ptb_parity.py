"""The Python PTB tokenizer against the official Java one (CoreNLP 3.4.1, as pycocoevalcap runs it).

    .venv/bin/python benchmarks/ptb_parity.py fuzz [--seeds 100-104] [--lines 3000]
    .venv/bin/python benchmarks/ptb_parity.py sweep            # every BMP code point in 5 contexts (~8 min)
    .venv/bin/python benchmarks/ptb_parity.py write-reference  # regenerate tests/data/ptb_*.json with Java

``fuzz`` tokenises random captions built from hard fragments (accents, CJK, emoji, symbols, HTML
entities, URLs, numbers with punctuation, abbreviations, quotes, dashes, contractions) with both
tokenizers, prints how many lines differ and the speed of each. ``write-reference`` stores the
jar's output for the pinned lines and the official pycocoevalcap scores (its own PTBTokenizer
class, Java) for the pinned caption corpus; the tests check the Python path against them.
Needs Java (``java`` on PATH).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from modaltune.metrics.captions import _java_streams, _python_lines  # noqa: E402

TOKENS_FILE = ROOT / "tests" / "data" / "ptb_tokens.json"
CORPUS_FILE = ROOT / "tests" / "data" / "caption_reference.json"

FRAGMENTS = [
    "a", "dog", "The", "A", "cat", "isn't", "can't", "won't", "dog's", "they're", "we've", "I'll", "I'd", "I'm", "'em",
    "rock 'n' roll", "'90s", "'till", "cannot", "gonna", "gotta", "wanna", "lemme", "gimme", "'twas", "'tis", "Mr.",
    "Mrs.", "Dr.", "St.", "U.S.", "U.K.", "e.g.", "i.e.", "etc.", "a.m.", "p.m.", "vs.", "Inc.", "Co.", "Ltd.", "Jan.",
    "No.", "no.", "fig.", "ca.", "pty. ltd", "3.5", "1,000", "7:30", "5:30pm", "10-20", "1/2", "5 1/2", "½", "¼", "¾",
    "⅓", "⅔", "⅛", "-5", "+3", "2nd", "1990s", "$5", "US$", "£3", "€4", "¥5", "¢", "#1", "#tag", "@user", "50%", "A&W",
    "AT&T", "S&P-500", "&amp;", "&AMP;", "&quot;", "&apos;", "&lt;", "&gt;", "&nbsp;", "&mdash;", "&#39;", "&eacute;",
    "http://example.com/a?b=1", "https://x.org/p.", "www.google.com", "foo.com", "bar.net/path", "a@b.com",
    "<a@b.com>", "file.txt", "photo.jpg", ".", ",", "?", "!", "!!", "?!", ":", ";", "-", "--", "---", "----", "-----",
    "...", "....", "…", ". . .", "(", ")", "[", "]", "{", "}", "<", ">", "<<", ">>", "<b>", "</b>", "<br/>",
    "<a href='x'>", '"', "'", "`", "``", "''", "“", "”", "‘", "’", "«", "»", "‹", "›", "„", "–", "—", "―", "*", "**",
    "\\*", "/", "\\/", "=", "+", "~", "^", "|", "\\", "_", "__", "©", "®", "™", "°", "±", "×", "÷", "§", "¶", "•", "·",
    "→", "∀", "√", ":)", ":-)", ";)", ":D", ":P", "^_^", "(^_^)", "o_O", "café", "crème", "brûlée", "naïve", "résumé",
    "Zoë", "Ångström", "straße", "ß", "İstanbul", "ΣΟΦΙΑ", "σοφια", "Москва", "日本", "東京タワー", "中文字", "한국어",
    "ไทย", "עברית", "العربية", "हिन्दी", "😀", "🐶", "👍🏽", "🇫🇷", "𝔘𝔫𝔦", "ﬁ", "Ǆ", "ǅ", "Ⅻ", "①", "²", "x²", "H₂O",
    "Ω", "µ", "ℓ", "℃", "colour", "favourite", "co-operate", "black-and-white", "state-of-the-art", "e-mail", "x-ray",
    "T-shirt", "o'clock", "O'Neil", "d'Artagnan", "l'amour", "y'all", "Y'know", "c'mon", "ma'am", "'cause", "cont'd",
    "\t", "  ", "\u00a0", "\u3000", "\u200b", "\ufeff", "\u00ad", "co\u00adoperate", "\x7f", "\x00", "\x01", "\u0085",
    "\u0096", "\u0097", "\u0091", "\u0092", "\u0093", "\u0094", "\u0080", "C++", "C#", ":-(", "=)", "<3", "a/b",
    "and/or", "24/7", "12/25/2020", "2020-01-01", "(555) 123-4567", "555-123-4567", "+1 555 123 4567", "1.2.3.4", "I.",
    "Z.", "He", "She", "It", "In", "Wash.", "Calif.", "Mass.", "Ph.D.", "Jr.", "Bros.", "Mt.", "Ft.", "est.", "tel.",
]
SYMBOLS = "abcXYZ019.,'-/&:;!?\"()"
DENSE = list("aAbBcCdDeEiInNsStTuUxXyYzZ0123456789 .,;:!?'\"`-_/\\&#@$%*()[]{}<>=+^~|") + [
    "\u00a0", "\u00ad", "\u2019", "\u2018", "\u201c", "\u201d", "…", "—", "–", "½", "é", "ß", "日", "😀", "&amp;",
    "&apos;", "&quot;", "n't", "'s", "'ll", "http://", "www.", ".com", "Mr.", "U.S.", "etc.", "\t", "\u3000",
]
# Characters the tokenizer reads as line breaks are read as spaces before tokenising (documented).
_BREAKS = str.maketrans(dict.fromkeys("\n\r\u000b\u000c\u2028\u2029", " "))


def caption_like(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        roll = rng.random()
        if roll < 0.75:
            parts.append(rng.choice(FRAGMENTS))
        elif roll < 0.9:
            parts.append("".join(rng.choice(SYMBOLS) for _ in range(rng.randint(1, 4))))
        else:
            point = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xFFFF),
                                rng.randint(0x10000, 0x1FAFF)])
            parts.append(chr(point) if not 0xD800 <= point <= 0xDFFF else "?")  # text is valid UTF-8
    text = "".join(part + rng.choice([" ", " ", " ", "", "  "]) for part in parts)
    return (text.strip(" ") if rng.random() < 0.8 else text).translate(_BREAKS)


def dense(rng: random.Random) -> str:
    return "".join(rng.choice(DENSE) for _ in range(rng.randint(0, 25))).translate(_BREAKS)


def compare(lines: list[str]) -> tuple[list[int], float, float]:
    start = time.perf_counter()
    java = _java_streams("java", [lines])[0]
    java_s = time.perf_counter() - start
    start = time.perf_counter()
    python = _python_lines(lines)
    python_s = time.perf_counter() - start
    return [i for i, (a, b) in enumerate(zip(java, python)) if a != b], java_s, python_s


def fuzz(seeds: list[int], n: int) -> int:
    differ = 0
    for seed in seeds:
        rng = random.Random(seed)
        for name, make in (("caption-like", caption_like), ("dense", dense)):
            lines = [make(rng) for _ in range(n)]
            bad, java_s, python_s = compare(lines)
            differ += len(bad)
            print(f"seed {seed} {name:12s} {n} lines: {len(bad)} differ; java {java_s:.1f} s, python {python_s:.1f} s")
            for i in bad[:5]:
                print("   ", repr(lines[i]))
    return differ


def sweep() -> int:
    skip = set(map(ord, "\r\n\u2028\u2029\x0b\x0c"))
    points = [cp for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF and cp not in skip]
    lines = [probe for cp in points for probe in (f"ab{chr(cp)}ab", chr(cp), f"{chr(cp)}.5", f"etc. {chr(cp)}x",
                                                    f"x {chr(cp)}")]
    bad, java_s, python_s = compare(lines)
    print(f"{len(points)} code points x 5 contexts: {len(bad)} lines differ "
          f"({len({points[i // 5] for i in bad})} code points); java {java_s:.0f} s, python {python_s:.0f} s")
    return len(bad)


PINNED_LINES = [
    "A crème brûlée.", "A crème brûlée on a plate.", "café au lait", "naïve Zoë's résumé", "Ångström straße",
    "日本の東京タワー", "中文字 and 한국어 text", "ไทย עברית العربية हिन्दी", "a dog 😀 with 🐶 and 👍🏽 🇫🇷",
    "𝔘𝔫𝔦 code", "€5, £3, ¥7, ¢50 and $10", "½ cup, 5 1/2 inches, ⅓ and ¾", "A&W root beer, AT&T, S&P-500",
    "the '90s and '80s", "meet at 5:30pm or 7:30 a.m.", "wait --- what -- ok - no", "fish &amp; chips &quot;hot&quot;",
    "&lt;tag&gt; &nbsp; &mdash; &eacute;", "see http://example.com/a?b=1. or www.google.com, or foo.com/x",
    "mail a@b.com or <a@b.com>", "1,000 people, 3.5 km, -5 degrees, +3 more, 1.2.3.4", "call (555) 123-4567 now",
    "12/25/2020 and 2020-01-01", "He lives in the U.S. The end", "I saw Mr. Smith etc. He left", "a dog etc.",
    "It costs 5 etc.", "fig. 3 and no. 5", "Smith & Co. ltd", "I cannot go, gonna 'tis 'twas wanna lemme",
    "isn't can't won't they're we've I'll I'd I'm 'em", "rock 'n' roll y'all c'mon o'clock O'Neil",
    'a "quoted" thing and \'single\' thing', "“curly” and ‘single’ «guillemets» ‹one›", "wow!! really?! no...",
    "dots . . . and … and ....", "(brackets) [square] {curly}", "x² H₂O 50% °C ± × ÷ © ® ™ § ¶ • · → ∀ √",
    ":) :-) ;) :D :P ^_^ (^_^) o_O <3", "C++ and C# and F#", "co\u00adoperate soft\u00ad hyphen", "tab\there",
    "nbsp\u00a0here and\u3000ideographic", "zero\u200bwidth and \ufeffbom", "cp1252 \u0093quote\u0094 \u0096 dash",
    "control \x01 char and \x7f del", "<b>bold</b> <br/> <a href='x'>link</a>", "#hashtag @user __init__",
    "black-and-white state-of-the-art e-mail x-ray T-shirt", "İstanbul ΣΟΦΙΑ σοφια Москва", "ﬁ ligature Ǆ ǅ Ⅻ ①",
    "Ph.D. Jr. Bros. Mt. Ft. est. tel. Wash. Calif. Mass.", "I. Z. A. B. done", "", "   ", "word.",
]


def write_reference() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    rng = random.Random(20261202)
    lines = PINNED_LINES + [caption_like(rng) for _ in range(250)] + [dense(rng) for _ in range(150)]
    java = _java_streams("java", [lines])[0]
    TOKENS_FILE.write_text(json.dumps({
        "source": "stanford-corenlp-3.4.1.jar from pycocoevalcap 1.2, run as pycocoevalcap runs it "
                  "(PTBTokenizer -preserveLines -lowerCase, lines joined by newlines), OpenJDK 17; "
                  "written by benchmarks/ptb_parity.py write-reference",
        "lines": lines, "java": java}, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    corpus = caption_corpus(random.Random(7))
    scores = {}
    for name, (predictions, references) in corpus.items():
        gts = {k: [{"caption": c} for c in refs] for k, refs in references.items()}
        res = {k: [{"caption": predictions[k]}] for k in references}
        tokenizer = PTBTokenizer()
        gts_t, res_t = tokenizer.tokenize(gts), tokenizer.tokenize(res)
        bleu, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
        cider, _ = Cider().compute_score(gts_t, res_t)
        rouge, _ = Rouge().compute_score(gts_t, res_t)
        scores[name] = {**{f"bleu_{n}": b for n, b in enumerate(bleu, 1)}, "cider": cider, "rouge_l": rouge}
    CORPUS_FILE.write_text(json.dumps({
        "source": "scores from the official pipeline: pycocoevalcap 1.2's PTBTokenizer (Java, CoreNLP 3.4.1, "
                  "OpenJDK 17) then its Bleu(4), Cider, Rouge; written by benchmarks/ptb_parity.py write-reference",
        "corpora": {name: {"predictions": p, "references": r, "official": scores[name]}
                    for name, (p, r) in corpus.items()}}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {TOKENS_FILE} ({len(lines)} lines) and {CORPUS_FILE} ({', '.join(corpus)})")


BASE_CAPTIONS = [
    "A man riding a wave on top of a surfboard.", "Two dogs playing in the snow!", "A plate of food with a fork.",
    "A red bus parked on the side of the street.", "A cat sleeping on a laptop keyboard.",
    "People walking down a busy city sidewalk.", "A kitchen with white cabinets and a stove.",
    "A giraffe standing next to a tall tree.", "A young boy swinging a baseball bat.", "A bowl of fruit on a table.",
]
UNICODE_WORDS = ["café", "crème brûlée", "naïve", "résumé", "Zoë", "straße", "日本", "東京タワー", "한국어", "😀",
                 "🐶", "€5", "£3", "½", "A&W", "'90s", "5:30pm", "---", "&amp;", "http://x.com/a", "Mr.", "U.S.",
                 "etc.", "“quoted”", "…", "—", "°C", "x²", "İstanbul", "ΣΟΦΙΑ", "Москва", "ไทย", "(555) 123-4567"]


def _perturb(rng: random.Random, caption: str, share: float) -> str:
    words = caption.split()
    out = []
    for word in words:
        if rng.random() < share:
            out.append(rng.choice(UNICODE_WORDS))
        elif rng.random() < 0.15:
            continue
        else:
            out.append(word)
    if rng.random() < 0.3:
        out.insert(rng.randrange(len(out) + 1), rng.choice(UNICODE_WORDS))
    return " ".join(out)


def caption_corpus(rng: random.Random) -> dict[str, tuple[dict[str, str], dict[str, list[str]]]]:
    """Three 40-image sets: plain ASCII, 30 % non-ASCII words, nearly all non-ASCII."""
    corpora = {}
    for name, share in (("ascii", 0.0), ("mixed_30pct", 0.3), ("unicode", 0.9)):
        predictions, references = {}, {}
        for i in range(40):
            base = BASE_CAPTIONS[i % len(BASE_CAPTIONS)]
            key = f"{name}-{i}"
            references[key] = [_perturb(rng, base, share) for _ in range(rng.randint(3, 5))]
            predictions[key] = _perturb(rng, base, share)
        corpora[name] = (predictions, references)
    predictions = {"creme": "A crème brûlée."}
    references = {"creme": ["A crème brûlée on a plate."]}
    corpora["issue_example"] = (predictions, references)
    return corpora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["fuzz", "sweep", "write-reference"])
    parser.add_argument("--seeds", default="100-104", help="fuzz seeds, e.g. 100-104 or 1,5,9")
    parser.add_argument("--lines", type=int, default=3000, help="lines per seed and generator")
    args = parser.parse_args()
    if args.mode == "write-reference":
        write_reference()
        return
    if args.mode == "sweep":
        sys.exit(1 if sweep() else 0)
    if "-" in args.seeds:
        lo, hi = map(int, args.seeds.split("-"))
        seeds = list(range(lo, hi + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    sys.exit(1 if fuzz(seeds, args.lines) else 0)


if __name__ == "__main__":
    main()
